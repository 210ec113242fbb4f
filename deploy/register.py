"""Register a fine-tuned classifier in the MLflow model registry and promote it if it earns it.

    .venv/bin/python deploy/register.py --run work/finetune/mae_selected [--name activessf-classifier] [--force]
    .venv/bin/python deploy/register.py --run-id <the fine-tuning's MLflow run id>
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python deploy/register.py --run /shared/finetune_mae --work-dir /shared/activessf

The run must come from `activessf finetune ... --set finetune.final_fit=true`: that run logged
the model (runs:/<run id>/model), and the new version's run is that training run. The alias
`champion` moves only if there is none yet or the new model beats it on the same folds (paired
t-test on macro PR-AUC, p < register.p_value); --force moves it anyway and is recorded. Arguments are those of `activessf register`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
import _bootstrap  # noqa: E402,F401

from activessf.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["register", *sys.argv[1:]]))
