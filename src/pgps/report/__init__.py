"""`pgps report`: aggregate the evaluated runs into metrics, a reviewer's report and plots."""
