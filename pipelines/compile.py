"""Compile every pipeline to ``pipelines/compiled/<name>.yaml`` (the golden files).

    .venv/bin/python -m pipelines.compile            # (re)write the golden files
    .venv/bin/python -m pipelines.compile --check    # exit 1 if they differ from the code

Image references come from ``SPARSEPIPE_IMAGE``/``SPARSEPIPE_TRAIN_IMAGE`` (see
``components/images.py``); the golden files are compiled with both unset.
"""

import argparse
import sys
import tempfile
from pathlib import Path

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"


def pipelines() -> dict:
    """``{file stem: pipeline function}`` of every pipeline in the project."""
    from pipelines.main import main_pipeline
    from pipelines.sweep import sweep_pipeline

    return {"main": main_pipeline, "sweep": sweep_pipeline}


def compile_pipeline(pipeline, path: Path) -> Path:
    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(path))
    return path


def normalized(text: str) -> str:
    """Compiled YAML without the kfp SDK version line and the ``#`` header comment.

    The header repeats the parameter defaults with dict keys in an unstable order; the spec
    below it holds the same information in a stable one.
    """
    lines = text.splitlines()
    return "\n".join(line for line in lines if not line.startswith(("sdkVersion:", "#"))) + "\n"


def compile_all(out_dir: Path = COMPILED_DIR) -> list[Path]:
    return [compile_pipeline(func, out_dir / f"{name}.yaml") for name, func in pipelines().items()]


def check(out_dir: Path = COMPILED_DIR) -> list[str]:
    """Names of the pipelines whose compiled YAML differs from the golden file."""
    drifted = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in compile_all(Path(tmp)):
            golden = out_dir / path.name
            if not golden.is_file() or normalized(golden.read_text()) != normalized(path.read_text()):
                drifted.append(path.stem)
    return drifted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the golden files, write nothing")
    parser.add_argument("--out", type=Path, default=COMPILED_DIR, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        drifted = check(args.out)
        if drifted:
            print(f"compiled pipelines differ from {args.out}: {', '.join(drifted)}. "
                  "Regenerate with `.venv/bin/python -m pipelines.compile` (make compile) and review the diff.")
            return 1
        print("compiled pipelines match the golden files")
        return 0
    for path in compile_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
