"""`compress()`: prune, factorize, distill and QAT-train a model, fine-tuning after each step, as `modelport compress`
runs it."""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from modelport.calibration import CalibrationSet, CalibrationWarning, open_evaluation
from modelport.compress import checkpoint, output, qat, qdq_ranges, steps
from modelport.compress.data import Examples, evaluate, read_examples
from modelport.compress.distill import Distillation, distill_step
from modelport.compress.macs import size
from modelport.compress.progress import EpochProgress
from modelport.compress.settings import Settings
from modelport.compress.train import EpochRecord, Loss, TrainStep, cross_entropy, fine_tune, task_step
from modelport.errors import BadInput
from modelport.harness.fidelity import TaskMetric, load_metric
from modelport.harness.matrix import prepare_model
from modelport.model import SourceModel, code_hash, load_model, resize_along, weights_hash


@dataclass
class CompressResult:
    model: SourceModel  # the compressed model (what OUT.pt2 holds)
    report: dict[str, Any]  # what --json prints and the manifest records
    path: Path


def _data(spec: str | CalibrationSet, source: SourceModel, flag: str) -> CalibrationSet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # its advice is about INT8 builds
        data = spec if isinstance(spec, CalibrationSet) else open_evaluation(spec, source.inputs)
    if data.synthetic:
        raise BadInput(f"{flag} {data.source.description}: random data has no labels and teaches the model nothing.",
                       hint=f"Give real {flag} data with labels.")
    return data


def _one_sample(source: SourceModel) -> dict[str, torch.Tensor]:
    """The example inputs at batch 1: MACs are reported per sample."""
    return {s.name: resize_along(source.example_inputs[s.name], 0, 1) if 0 in s.dynamic_axes
            else source.example_inputs[s.name] for s in source.inputs}


def _objective(settings: Settings, teacher: torch.nn.Module, names: list[str], loss: Loss | None,
               train_step: TrainStep | None, train: Examples) -> tuple[TrainStep, TrainStep, dict[str, Any]]:
    """(the fine-tuning step, the task step, what the fine-tuning minimises, for the report)."""
    if train_step is not None:
        if settings.distill:
            raise BadInput("Distillation blends its loss with the task loss, so it needs loss=, not train_step=.")
        return train_step, train_step, {"objective": "train_step"}
    if loss is None:
        train.require_labels("--train", "the built-in task loss (cross-entropy)")
    task = task_step(loss or cross_entropy, names)
    if not settings.distill:
        return task, task, {"objective": "task"}
    distillation = Distillation(settings.temperature, settings.alpha, settings.distill_features)
    return (distill_step(teacher, distillation, loss or cross_entropy, names), task,
            {"objective": "distill", "distill": distillation.to_json()})


def compress(model: SourceModel | str, *, train: str | CalibrationSet, out: str | Path, settings: Settings,
             evaluation: str | CalibrationSet | None = None, loss: Loss | None = None,
             train_step: TrainStep | None = None, metric: str | TaskMetric | None = None, threads: int | None = None,
             show_progress: bool = False, on_epoch: Callable[[EpochRecord], None] | None = None) -> CompressResult:
    """Apply the steps `settings` asks for, fine-tune after each, write OUT.pt2 and its manifest OUT.json.

    With QAT, OUT.pt2 holds the float model with the trained weights (on the int8 grid, fake quantization
    removed) and OUT.pt2.ranges.json the learned activation ranges by ONNX tensor name; the report's `qat`
    entry names the file and the int8 build command that uses it.

    `loss(outputs, labels)` or `train_step(module, inputs, labels)` replace the built-in cross-entropy for
    models whose task modelport cannot know; `metric` is the evaluation metric (default top-1 accuracy).
    Without `evaluation`, `train` is split into disjoint training and evaluation parts. Each finished epoch
    is checkpointed beside OUT, and the same call after an interruption resumes from it. `on_epoch` sees
    every finished epoch (after its checkpoint is written). `threads` pins torch's threads for the run (one
    thread is fastest for small models on a busy machine). Axis 0 of every input stays a dynamic batch
    in OUT.pt2 where the model runs at other batch sizes.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _compress(model, train, Path(out), settings, evaluation, loss, train_step, metric, show_progress,
                         on_epoch)
    finally:
        torch.set_num_threads(previous)


def _compress(model: SourceModel | str, train: str | CalibrationSet, out: Path, settings: Settings,
              evaluation: str | CalibrationSet | None, loss: Loss | None, train_step: TrainStep | None,
              metric: str | TaskMetric | None, show_progress: bool,
              on_epoch: Callable[[EpochRecord], None] | None) -> CompressResult:
    out = output.check_output(out)
    source = prepare_model(load_model(model) if isinstance(model, str) else model, (1,), user_dynamic=False)
    train_set = _data(train, source, "--train")
    if evaluation is None:
        train_set, eval_set = train_set.split(0.25, seed=settings.seed)
    else:
        eval_set = _data(evaluation, source, "--eval")
    task_metric = metric if isinstance(metric, TaskMetric) else load_metric(metric)
    train_data, eval_data = read_examples(train_set), read_examples(eval_set)
    names = source.output_names
    teacher = source.module.eval()
    fit_step, task, objective = _objective(settings, teacher, names, loss, train_step, train_data)
    eval_data.require_labels("--eval", f"the metric {task_metric.name}")
    inputs = _one_sample(source)

    def measure(module: torch.nn.Module) -> dict[str, Any]:
        return {**size(module, inputs), "metric": evaluate(module, eval_data, names, task_metric)}

    plan = steps.plan(settings)
    key = checkpoint.run_key(model=source.content_hash, train=train_data.fingerprint, eval=eval_data.fingerprint,
                             settings=settings.to_json(), objective=objective, metric=task_metric.name)
    saved = checkpoint.Checkpoints(output.checkpoint_dir(out))
    state = saved.load(key)
    resumed = None if state is None else {"step": len(state.steps) + 1, "epoch": state.epoch}
    state = state or checkpoint.RunState(key, copy.deepcopy(teacher))
    student = state.module
    start = time.perf_counter()
    original = measure(teacher)
    ctx = steps.Context(inputs, train_data, task)
    with EpochProgress(show_progress, task_metric.name) as bar:
        for index, technique in enumerate(plan):
            if index < len(state.steps):
                continue
            label = f"{technique.name} ({index + 1}/{len(plan)})"
            schedule = steps.schedule(settings, technique)
            if not state.changed:
                before = measure(student)
                torch.manual_seed(settings.seed + index)
                details = technique.apply(student, ctx)
                state.current = {"technique": technique.name, "settings": technique.settings(), "details": details,
                                 "fine_tune": {"epochs": schedule.epochs, "lr": schedule.lr,
                                               "batch_size": schedule.batch_size, **objective},
                                 "before": before, "epochs": []}
                state.changed, state.epoch, state.optimizer = True, 0, None
                saved.save(state)
            bar.start(label, schedule.epochs, state.epoch)

            def finished(record: EpochRecord, optimizer: torch.optim.Optimizer) -> None:
                state.current["epochs"].append(record.to_json())
                state.epoch, state.optimizer = record.epoch, optimizer.state_dict()
                saved.save(state)
                bar.advance(record)
                if on_epoch is not None:
                    on_epoch(record)

            fine_tune(student, fit_step, train_data, schedule, step=index, start_epoch=state.epoch,
                      optimizer_state=state.optimizer, evaluate=lambda m: evaluate(m, eval_data, names, task_metric),
                      on_epoch=finished)
            state.steps.append({**state.current, "after": measure(student)})
            state.changed, state.current, state.optimizer = False, {}, None
            saved.save(state)
    learned = qat.freeze(student)
    student.eval()
    compressed = replace(source, name=out.stem, origin=str(out), module=student, weights_hash=weights_hash(student),
                         code_hash=code_hash(student))
    output.save_program(compressed, out)
    ranges = qdq_ranges.write_ranges(out, learned, train if isinstance(train, str) else "SRC") if learned \
        else None
    report = {"model": source.origin, "output": str(out), "manifest": str(output.manifest_path(out)),
              "metric": {"name": task_metric.name, "units": task_metric.units},
              "before": original, "after": measure(student) if learned else state.steps[-1]["after"],
              "steps": state.steps, "qat": ranges,
              "settings": settings.to_json(), "train": {"source": train_data.description, "samples": len(train_data)},
              "eval": {"source": eval_data.description, "samples": len(eval_data)}, "resumed": resumed,
              "seconds": time.perf_counter() - start}
    output.write_manifest(report, out)
    saved.clear()
    return CompressResult(compressed, report, out)
