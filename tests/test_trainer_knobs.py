"""PGPS_* knobs (issue 15, "every value that parses must also work"; issue 12.3, ``--c`` takes them from
the checkpoint), without training:

- every value ``read_knobs`` accepts is usable: integers within what torch/numpy seeding and the
  schedule take, a finite time budget that normalises to a string that parses again, a fraction of
  the constant-patch run of at least one epoch, a codecarbon country codecarbon has data for
  (checked against codecarbon's own offline table); everything else is one line naming the variable;
- ``resume_knobs``: the checkpoint's knobs when no variable is set, an equal value (after
  normalisation) accepted, a conflicting one refused naming both values.
Runtime: ~5 s."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgps.errors import PGPSError
from pgps.nnunet.knobs import (
    DEFAULTS,
    MAX_BUDGET_S,
    MAX_EPOCHS,
    MAX_SEED,
    Knobs,
    as_env,
    parse_time_budget,
    read_knobs,
    resume_knobs,
)
from pgps.nnunet.seeding import seed_everything
from pgps.schedule import build_schedule

INT_KNOBS = ["PGPS_NUM_EPOCHS", "PGPS_ITERS_PER_EPOCH", "PGPS_VAL_ITERS", "PGPS_SEED", "PGPS_SAVE_EVERY"]


def _one_line_naming(exc: PGPSError, name: str) -> None:
    text = str(exc)
    assert text.startswith(f"{name}=") and "\n" not in text and len(text) < 400, text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PGPS_SEED", str(2**64)),  # torch.manual_seed: "Overflow when unpacking long" at epoch 0
        ("PGPS_SEED", str(2**32)),  # numpy seeds mod 2**32: would repeat seed 0
        ("PGPS_NUM_EPOCHS", "1" + "0" * 30),
        ("PGPS_ITERS_PER_EPOCH", str(10**12)),
        ("PGPS_VAL_ITERS", str(10**9)),
        ("PGPS_SAVE_EVERY", str(10**9)),
        ("PGPS_TIME_BUDGET", "1" + "0" * 400 + "s"),  # float() is inf
        ("PGPS_TIME_BUDGET", "99999999h"),
        ("PGPS_TIME_BUDGET", "1e308s"),
        ("PGPS_TIME_BUDGET", "0.0000001x"),
        ("PGPS_TIME_BUDGET", "0.0001x"),  # with 1000 epochs: a tenth of one epoch
        ("PGPS_TIME_BUDGET", "101x"),
        ("PGPS_TIME_BUDGET", "0.2s"),
        ("PGPS_TIME_BUDGET", "inf s"),
        ("PGPS_TIME_BUDGET", "nan x"),
        ("PGPS_CODECARBON", "XYZ"),  # three letters, but no country codecarbon knows (world average)
        ("PGPS_CODECARBON", "ATA"),
    ],
)
def test_absurd_values_are_refused_at_parse_time(name: str, value: str) -> None:
    with pytest.raises(PGPSError) as err:
        read_knobs({name: value})
    _one_line_naming(err.value, name)


def test_the_largest_accepted_values_work() -> None:
    k = read_knobs({"PGPS_SEED": str(MAX_SEED), "PGPS_NUM_EPOCHS": str(MAX_EPOCHS), "PGPS_TIME_BUDGET": "8784h"})
    seed_everything(k.seed * 1_000_003 + k.num_epochs)  # the per-epoch reseed of the last epoch
    s = build_schedule((128, 128, 128), (5, 5, 5), k.num_epochs, 2, mode="pgps", seed=k.seed)
    assert s.stages[-1].end_epoch == MAX_EPOCHS
    assert k.time_budget == f"{MAX_BUDGET_S}s"
    assert read_knobs({"PGPS_TIME_BUDGET": "0.00001x", "PGPS_NUM_EPOCHS": str(MAX_EPOCHS)}).time_budget == "0.00001x"


def test_codecarbon_countries_are_codecarbons_own() -> None:
    from codecarbon.input import DataSource

    known = DataSource().get_global_energy_mix_data()
    assert {"DEU", "USA", "FRA"} <= set(known)
    for code in ("DEU", "usa", "Fra"):
        assert read_knobs({"PGPS_CODECARBON": code}).codecarbon == code.upper()
    assert read_knobs({"PGPS_CODECARBON": "off"}).codecarbon == "off"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_any_time_budget_text_is_refused_in_one_line_or_usable(raw: str) -> None:
    try:
        normal = parse_time_budget(raw)
    except PGPSError as exc:
        _one_line_naming(exc, "PGPS_TIME_BUDGET")
        return
    assert normal == "off" or normal[-1] in "sx"
    if normal != "off":
        value = float(normal[:-1])
        assert math.isfinite(value) and value > 0
        assert value <= (MAX_BUDGET_S if normal.endswith("s") else 100)
    assert parse_time_budget(normal) == normal  # the normalised value (config, checkpoint) parses again


@settings(max_examples=300, deadline=None)
@given(
    st.floats(min_value=1e-9, max_value=1e12, allow_nan=False),
    st.sampled_from(["h", "m", "s", "x"]),
    st.integers(min_value=1, max_value=MAX_EPOCHS),
)
def test_any_accepted_budget_normalises_to_itself(value: float, unit: str, epochs: int) -> None:
    raw = f"{value:.9f}{unit}"
    env = {"PGPS_TIME_BUDGET": raw, "PGPS_NUM_EPOCHS": str(epochs)}
    try:
        k = read_knobs(env)
    except PGPSError as exc:
        _one_line_naming(exc, "PGPS_TIME_BUDGET")
        return
    normal = float(k.time_budget[:-1])
    if unit == "x":
        assert normal * epochs >= 1  # at least one constant-patch epoch
    else:
        assert 1 <= normal <= MAX_BUDGET_S
    assert read_knobs({**env, "PGPS_TIME_BUDGET": k.time_budget}) == k


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(INT_KNOBS), st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=12)))
def test_any_integer_knob_is_refused_in_one_line_or_usable(name: str, value: int | str) -> None:
    try:
        k = read_knobs({name: str(value)})
    except PGPSError as exc:
        _one_line_naming(exc, name)
        return
    seed_everything(k.seed * 1_000_003 + k.num_epochs)  # never overflows
    assert 1 <= k.num_epochs <= MAX_EPOCHS and 0 <= k.seed <= MAX_SEED
    assert read_knobs(as_env(k)) == k


# ---------------------------------------------------------------- --c takes the checkpoint's knobs
SAVED = read_knobs({"PGPS_NUM_EPOCHS": "6", "PGPS_SEED": "7", "PGPS_TIME_BUDGET": "30m", "PGPS_CODECARBON": "DEU"})


def test_resume_without_variables_takes_the_checkpoints_knobs() -> None:
    assert resume_knobs(SAVED.to_dict(), "ckpt.pth", env={"HOME": "/x"}) == SAVED
    assert SAVED.time_budget == "1800s"


def test_resume_accepts_an_explicit_value_that_means_the_same() -> None:
    env = {"PGPS_TIME_BUDGET": "0.5h", "PGPS_NUM_EPOCHS": "6", "PGPS_CODECARBON": "deu"}
    assert resume_knobs(SAVED.to_dict(), "ckpt.pth", env=env) == SAVED


@pytest.mark.parametrize(
    ("name", "value", "theirs"),
    [
        ("PGPS_NUM_EPOCHS", "9", "6"),
        ("PGPS_TIME_BUDGET", "off", "'1800s'"),
        ("PGPS_SEED", "0", "7"),
        ("PGPS_AUGMENTATION", "planned", "'stage'"),
    ],
)
def test_resume_refuses_a_conflicting_value_naming_both(name: str, value: str, theirs: str) -> None:
    with pytest.raises(PGPSError) as err:
        resume_knobs(SAVED.to_dict(), "fold/checkpoint_latest.pth", env={name: value})
    assert str(err.value) == (
        f"fold/checkpoint_latest.pth: {name}={value!r} conflicts with the checkpoint's {name}={theirs}; "
        "unset it to resume with the checkpoint's value, or start a new run"
    )


def test_resume_of_a_checkpoint_that_predates_a_knob_takes_its_default() -> None:
    old = {k: v for k, v in SAVED.to_dict().items() if k not in ("augmentation", "cuda_graphs")}
    k = resume_knobs(old, "ckpt.pth", env={})
    assert (k.augmentation, k.cuda_graphs) == (DEFAULTS["PGPS_AUGMENTATION"], DEFAULTS["PGPS_CUDA_GRAPHS"])


@pytest.mark.parametrize(
    ("saved", "needle"),
    [
        ({**SAVED.to_dict(), "evil": 1}, "not a mapping of known knobs"),
        (["num_epochs", 6], "not a mapping of known knobs"),
        ({**SAVED.to_dict(), "num_epochs": 10**9}, "the checkpoint's PGPS knobs do not parse: PGPS_NUM_EPOCHS="),
        ({**SAVED.to_dict(), "time_budget": "forever"}, "do not parse: PGPS_TIME_BUDGET="),
    ],
)
def test_resume_refuses_damaged_recorded_knobs(saved: object, needle: str) -> None:
    with pytest.raises(PGPSError, match=f"^ckpt.pth: .*{needle}") as err:
        resume_knobs(saved, "ckpt.pth", env={})
    assert "\n" not in str(err.value)


def test_knobs_round_trip_through_their_variables() -> None:
    k = Knobs(**{**SAVED.to_dict(), "min_full_share": 0.3, "augmentation": "planned", "cuda_graphs": "on"})
    assert read_knobs(as_env(k)) == k


def test_without_codecarbon_a_country_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core install has no codecarbon (it comes with pgps[pipeline]): refused at parse time, and by
    StageEnergy itself, instead of a ModuleNotFoundError after the set-up."""
    import sys

    from pgps.nnunet import knobs
    from pgps.nnunet.energy import StageEnergy

    for name in [m for m in sys.modules if m == "codecarbon" or m.startswith("codecarbon.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "codecarbon", None)  # import fails as if not installed
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    knobs.codecarbon_countries.cache_clear()
    try:
        with pytest.raises(
            PGPSError, match=r"^PGPS_CODECARBON: codecarbon is not installed: pip install 'pgps\[pipeline\]'"
        ):
            read_knobs({"PGPS_CODECARBON": "DEU"})
        assert read_knobs({"PGPS_CODECARBON": "off"}).codecarbon == "off"
        with pytest.raises(PGPSError, match=r"^PGPS_CODECARBON=DEU: codecarbon is not installed"):
            StageEnergy("DEU", "/nonexistent", "p", "process")
    finally:
        knobs.codecarbon_countries.cache_clear()
