"""Numbers beyond the machine are refused with the reason (issue 15, item 10).

    .venv/bin/python -m pytest tests/test_hardening_limits.py -q

``benchmark --threads 100000`` ran until killed (1.4 GB); ``export --batch 100000``, ``train --epochs
1e20`` and ``--imgsz 100000`` ended in out-of-memory tracebacks (30-120 GB). Each case runs the real
CLI; the model path does not exist, so only a check of the number itself can produce the expected
message, and nothing may be written.
"""

from __future__ import annotations

import pytest

from sparsepipe.cli import main
from sparsepipe.limits import MAX_IMGSZ, check_input_size, machine_memory_bytes, usable_cpu_count

BIG = 100_000
CASES = {
    "benchmark threads": (["benchmark", "--model", "{missing}.onnx", "--threads", str(BIG)], "threads per CPU"),
    "benchmark streams": (["benchmark", "--model", "{missing}.onnx", "--scenario", "async", "--streams", str(BIG)],
                          "threads per CPU"),
    "benchmark batch": (["benchmark", "--model", "{missing}.onnx", "--batch", str(BIG), "--imgsz", "640"],
                        "GiB of memory here"),
    "export batch": (["export", "--model", "{missing}.pt", "--batch", str(BIG)], "GiB of memory here"),
    "export imgsz": (["export", "--model", "{missing}.pt", "--imgsz", str(BIG)], f"above the {MAX_IMGSZ} px"),
    "train epochs": (["train", "--model", "{missing}.pt", "--epochs", str(10**20)], "epochs sparsepipe accepts"),
    "train imgsz": (["train", "--model", "{missing}.pt", "--imgsz", str(BIG)], f"above the {MAX_IMGSZ} px"),
    "train batch": (["train", "--model", "{missing}.pt", "--batch", str(BIG), "--imgsz", "640"], "GiB of memory here"),
    "sparsify imgsz": (["sparsify", "--model", "{missing}.pt", "--imgsz", str(BIG)], f"above the {MAX_IMGSZ} px"),
    "quantize imgsz": (["quantize", "--model", "{missing}.pt", "--imgsz", str(BIG)], f"above the {MAX_IMGSZ} px"),
    "predict threads": (["predict", "{missing}.onnx", "x.jpg", "--threads", str(BIG)], "threads per CPU"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_absurd_numbers_are_refused_with_the_reason(case, tmp_path, capsys):
    argv, expected = CASES[case]
    args = [a.replace("{missing}", str(tmp_path / "missing")) for a in argv]
    code = main([*args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and expected in err, err
    assert not (tmp_path / "out").exists()


def test_train_epochs_as_a_float_is_refused_through_python():
    from sparsepipe.errors import ConfigError
    from sparsepipe.training import TrainConfig

    with pytest.raises(ConfigError, match="positive integer"):
        TrainConfig(epochs=1e20)


def test_the_memory_check_never_refuses_what_fits():
    """The lower bound admits the usual sizes on any machine with 2 GiB, and reads real figures."""
    assert machine_memory_bytes() > 2**30 and usable_cpu_count() >= 1
    check_input_size(64, 640, "training")  # 64 x 640 px: 0.7 GiB at 28 bytes per pixel
    check_input_size(1, MAX_IMGSZ, "export")  # 1.75 GiB
