"""Property tests: hostile CLI flags and component parameters give clear errors, never tracebacks.

    .venv/bin/python -m pytest tests/test_hardening_params.py -q

Extends the recipe fuzzing of ``tests/recipe/test_recipe_fuzz.py`` to the command line (run in
process through ``sparsepipe.cli.main``) and to the functions the KFP components call
(``sparsepipe.kfp_support.run_*``): numbers out of range, wrong types, unicode, huge strings and
garbage run contexts. The model and data paths point at nothing, so no case trains; every case
must end in exit status 2 (argparse's or sparsepipe's user-error code) with a message and no
traceback, or in a :class:`~sparsepipe.errors.SparsepipeError` from Python.
"""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsepipe.cli import main
from sparsepipe.errors import SparsepipeError

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

NASTY_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0x80, max_codepoint=0x2FFFF, exclude_categories=["Cs"]),
            min_size=1, max_size=20),
    st.sampled_from(["", " ", "-1", "0", "1e309", "nan", "inf", "-inf", "NaN", "0x10", "1_000", "٣", "²",
                     "9" * 400, "x" * 100_000, "../../etc/passwd", "C:\\\\x", "$(id)", "'; DROP TABLE", "\u202e",
                     "{\"a\": [1, 2]}", "true", "None", "null", "[]", "=", "a=b=c", "1.5", "-0", "\x00", "a\x00b",
                     "k=\x00", "k=[", "k={a", "k=!!python/object/apply:os.system [id]", "\x1b[31mred", "http://\x00/x.zip",
                     "s3://\x00/x", "s3://", "http://", "models:/", "models:/x@", "k=v,=", "num_epochs=1e999"]),
)
NUMBERS = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr))
VALUE = st.one_of(NASTY_TEXT, NUMBERS)

#: Per command, the flags that take a value (model/data/out are fixed to harmless paths).
FLAGS = {
    "data": ["--source", "--data-sha256"],
    "train": ["--epochs", "--imgsz", "--batch", "--device", "--workers", "--seed", "--optimizer", "--lr0",
              "--patience", "--ultralytics-arg", "--variant", "--experiment", "--run-name"],
    "sparsify": ["--recipe", "--recipe-args", "--teacher", "--max-epochs", "--imgsz", "--batch", "--device",
                 "--workers", "--seed", "--optimizer", "--ultralytics-arg", "--variant"],
    "export": ["--imgsz", "--batch", "--opset", "--variant"],
    "quantize": ["--method", "--recipe", "--recipe-args", "--imgsz", "--calibration-images", "--calibration-method",
                 "--percentile", "--op-types", "--exclude-nodes", "--activation-type", "--opset", "--seed",
                 "--max-epochs"],
    "evaluate": ["--imgsz", "--batch", "--split", "--device", "--variant"],
    "benchmark": ["--baseline", "--engine", "--batch", "--imgsz", "--threads", "--warmup", "--iterations",
                  "--duration", "--rounds"],
    "report": ["--baseline", "--title"],
}


def _argv(command: str, flags: dict[str, str], tmp) -> list[str]:
    base = {"data": [], "report": ["--results", str(tmp / "no-such-step")]}.get(
        command, ["--model", str(tmp / "missing" / "model.pt")])
    if command == "sparsify" and "--recipe" not in flags:
        base += ["--recipe", "tests/sparsify/prune-quick.yaml"]
    if command in ("train", "sparsify", "quantize", "evaluate"):
        base += ["--data", str(tmp / "no-such-data")]
    if command == "data" and "--source" not in flags:
        base += ["--source", str(tmp / "no-such-data")]
    argv = [command, *base]
    for flag, value in flags.items():
        argv.append(f"{flag}={value}")  # '=' so a value starting with '-' stays a value
    if command != "data":
        argv.append("--no-track")
    return [*argv, "--out", str(tmp / "out")]


def _run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage + message, status 2
            code = exc.code
    return code, err.getvalue()


@st.composite
def cli_cases(draw):
    command = draw(st.sampled_from(sorted(FLAGS)))
    names = draw(st.lists(st.sampled_from(FLAGS[command]), min_size=1, max_size=3, unique=True))
    return command, {name: draw(VALUE) for name in names}


@SETTINGS
@given(case=cli_cases())
def test_cli_hostile_values_give_clear_errors(case, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    command, flags = case
    code, err = _run_cli(_argv(command, flags, tmp))
    assert code == 2, (command, flags, err[-500:])
    assert "Traceback" not in err and err.strip(), (command, flags)
    assert not (tmp / "out" / "result.json").exists()


@pytest.mark.parametrize("argv,expected", [
    (["train", "--epochs=0"], "epochs"),
    (["train", "--imgsz=33"], "multiple of 32"),
    (["train", "--batch=-4"], "batch"),
    (["train", "--workers=-1"], "workers"),
    (["sparsify", "--workers=-1"], "workers"),
    (["sparsify", "--max-epochs=0"], "max_epochs"),
    (["export", "--opset=99"], "opset"),
    (["evaluate", "--batch=0"], "batch"),
    (["evaluate", "--split=train"], "split"),
    (["benchmark", "--duration=nan"], "duration"),
    (["benchmark", "--threads=0"], "threads"),
    (["quantize", "--percentile=101"], "percentile"),
    (["quantize", "--calibration-images=0"], "calibration_images"),
    (["data", "--data-sha256=xyz"], "SHA-256"),
    (["train", "--ultralytics-arg=k=\x00"], "not valid YAML"),  # found by the fuzz test above
    (["data", "--source=http://\x00/x.zip"], "Downloading"),  # found by the fuzz test above
])
def test_out_of_range_numbers_name_the_field(argv, expected, tmp_path):
    command, *flags = argv
    code, err = _run_cli(_argv(command, dict(f.split("=", 1) for f in flags), tmp_path))
    assert code == 2 and expected in err and "Traceback" not in err, err


# ---------------------------------------------------------------------- component parameters

INTS = st.one_of(st.integers(-10**9, 10**9), st.sampled_from([0, -1, 2**63]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5))
CONTEXTS = st.one_of(st.just(""), NASTY_TEXT, st.sampled_from([
    "{}", "[]", "null", "{\"tracking_uri\": 5}", "{\"publish_root\": \"ftp://x\"}", "{\"bogus\": 1}",
    "{\"publish_root\": \"s3://\"}", "{\"tracking_uri\": \"\", \"parent_run_id\": [1]}", "{" * 5000]))


@st.composite
def component_calls(draw):
    from sparsepipe import kfp_support as k

    name = draw(st.sampled_from(["data", "train", "export", "evaluate", "benchmark", "quantize", "sparsify"]))
    ctx = draw(CONTEXTS)
    if name == "data":
        return k.run_data, (draw(NASTY_TEXT), "OUT", ctx), {"validate": draw(st.booleans())}
    if name == "train":
        kw = {"epochs": draw(INTS), "imgsz": draw(INTS), "batch": draw(INTS), "workers": draw(INTS),
              "seed": draw(INTS), "accelerator": draw(NASTY_TEXT), "variant": draw(NASTY_TEXT)}
        return k.run_train, ("MISSING", "NODATA", "OUT", ctx), kw
    if name == "export":
        return k.run_export, ("MISSING", "OUT", ctx), {"imgsz": draw(INTS), "opset": draw(INTS)}
    if name == "evaluate":
        return k.run_evaluate, ("MISSING", "NODATA", "OUT", ctx), {"variant": draw(NASTY_TEXT)}
    if name == "benchmark":
        kw = {"threads": draw(INTS), "iterations": draw(INTS), "warmup": draw(INTS)}
        return k.run_benchmark, ("MISSING", "OUT", ctx), kw
    if name == "quantize":
        kw = {"calibration_images": draw(INTS), "calibration_method": draw(NASTY_TEXT), "seed": draw(INTS)}
        return k.run_quantize, ("MISSING", "NODATA", "OUT", ctx), kw
    kw = {"recipe_args": draw(NASTY_TEXT), "imgsz": draw(INTS), "batch": draw(INTS), "max_epochs": draw(INTS)}
    return k.run_sparsify, ("MISSING", "NODATA", draw(NASTY_TEXT), "OUT", ctx), kw


@SETTINGS
@given(call=component_calls())
def test_component_parameters_give_clear_errors(call, tmp_path_factory, monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    tmp = tmp_path_factory.mktemp("comp")
    func, args, kwargs = call
    paths = {"MISSING": str(tmp / "missing.pt"), "NODATA": str(tmp / "no-data"), "OUT": str(tmp / "out")}
    args = tuple(paths.get(a, a) if isinstance(a, str) else a for a in args)
    try:
        func(*args, **kwargs)
    except SparsepipeError as exc:
        assert str(exc).strip()
    else:
        pytest.fail(f"{func.__name__}{args} {kwargs} succeeded on a missing model/data")
    assert not (tmp / "out" / "result.json").exists()
