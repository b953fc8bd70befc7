"""lm-evaluation-harness tasks through :class:`tasks.language.lm_eval_adapter.SDLLMEvalLM`, offline.

    zoo eval sdllm-tiny-shakespeare --tasks zoo_shakespeare_lines [--include-path DIR] [--limit N]

A task is an lm-eval YAML config (EleutherAI/lm-evaluation-harness,
``docs/new_task_guide.md``): ``task``, ``dataset_path``, ``doc_to_text`` /
``doc_to_choice`` / ``doc_to_target``, ``output_type``, ``metric_list``. The
zoo ships one, :data:`TASK_DIR` ``/zoo_shakespeare_lines.yaml``: a local jsonl
read by the ``datasets`` library's packaged ``json`` builder (``dataset_path:
json`` with ``dataset_kwargs: data_files``), so nothing is downloaded.

Tasks are looked up in :data:`TASK_DIR` and the ``--include-path`` folders
first (lm-eval's ``TaskManager(include_path=...)``); only a name found in
neither makes lm-eval index its own ~15,000 task configs (minutes). Local
``data_files`` written relative to the YAML are resolved against the YAML's
folder (lm-eval itself resolves them against the working directory), and the
Hugging Face libraries run offline (``HF_DATASETS_OFFLINE=1``,
``HF_HUB_OFFLINE=1``) unless the caller has set those variables: a task
whose data set is not local or cached fails with lm-eval's / datasets' message.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from zoo.errors import ZooError

__all__ = ["TASK_DIR", "run_tasks", "task_configs"]

TASK_DIR = Path(__file__).with_name("lm_eval_tasks")
_LOCAL_BUILDERS = ("json", "csv", "text", "parquet", "arrow")  # datasets' packaged builders that read data_files


def _offline() -> None:
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        os.environ.setdefault(var, "1")


def _lm_eval():
    _offline()
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ZooError("zoo eval --tasks needs lm-evaluation-harness: pip install lm-eval "
                       "(or pip install 'spiking-zoo[language-eval]')") from None
    return lm_eval, TaskManager


def _absolute(files, base: Path):
    """``data_files`` (a path, a list, or ``{split: path or list}``) with relative paths made absolute against
    ``base`` where the file is there."""
    if isinstance(files, dict):
        return {k: _absolute(v, base) for k, v in files.items()}
    if isinstance(files, (list, tuple)):
        return [_absolute(f, base) for f in files]
    if isinstance(files, str) and not Path(files).is_absolute() and "://" not in files and (base / files).exists():
        return str(base / files)
    return files


def task_configs(names: list[str], include_path=None):
    """``(specs, task_manager)`` for ``lm_eval.simple_evaluate``: each name as lm-eval's task name, or, for a YAML
    task of a local builder (``dataset_path: json``...), its config dict with ``data_files`` made absolute."""
    _, TaskManager = _lm_eval()
    from lm_eval.tasks._yaml_loader import load_yaml

    paths = [str(TASK_DIR)] + [str(p) for p in (include_path or [])]
    for p in paths[1:]:
        if not Path(p).is_dir():
            raise ZooError(f"--include-path {p} is not a folder")
    tm = TaskManager(include_path=paths, include_defaults=False)
    missing = [n for n in names if n not in tm.task_index]
    if missing:
        print(f"zoo eval: {', '.join(missing)} not in {', '.join(paths)}: indexing lm-eval's own tasks (minutes)",
              file=sys.stderr, flush=True)
        tm = TaskManager(include_path=paths, include_defaults=True)
        unknown = [n for n in names if n not in tm.task_index]
        if unknown:
            raise ZooError(f"unknown lm-eval task {', '.join(unknown)}; the zoo's tasks: "
                           f"{', '.join(sorted(p.stem for p in TASK_DIR.glob('*.yaml')))} (or pass --include-path DIR "
                           "with your task YAML)")
    specs = []
    for name in names:
        entry = tm.task_index[name]
        yaml_path = getattr(entry, "yaml_path", None)
        if yaml_path is None or getattr(entry.kind, "name", "") != "TASK":
            specs.append(name)
            continue
        cfg = load_yaml(Path(yaml_path), resolve_func=True)
        kwargs = dict(cfg.get("dataset_kwargs") or {})
        if cfg.get("dataset_path") in _LOCAL_BUILDERS and "data_files" in kwargs:
            kwargs["data_files"] = _absolute(kwargs["data_files"], Path(yaml_path).parent)
            cfg = {**cfg, "dataset_kwargs": kwargs}
            specs.append(cfg)
        else:
            specs.append(name)
    return specs, tm


def run_tasks(model, tokenizer, names: list[str], include_path=None, limit: int | None = None,
              num_fewshot: int | None = None, max_length: int = 2048, batch_size: int = 8) -> dict:
    """Run lm-eval tasks on a (converted) causal LM; ``{"results": {task: {metric: value}}, "samples": {...}}``
    (lm-eval's own result dict: metrics keyed ``"acc,none"``, per-document ``samples``)."""
    lm_eval, _ = _lm_eval()
    from .lm_eval_adapter import SDLLMEvalLM

    specs, tm = task_configs(names, include_path)
    lm = SDLLMEvalLM(model, tokenizer, max_length=max_length, batch_size=batch_size)
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=specs, task_manager=tm, limit=limit, num_fewshot=num_fewshot,
                                      log_samples=True, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                                      torch_random_seed=0, fewshot_random_seed=0)
    except (FileNotFoundError, ConnectionError) as e:
        raise ZooError(f"lm-eval could not read the task data offline ({type(e).__name__}: {str(e)[:200]}); "
                       "point the task's dataset_kwargs.data_files at local files") from None
    if out is None:  # pragma: no cover - lm-eval returns None on non-zero ranks only
        raise ZooError("lm-eval returned no results")
    return out
