"""`modelcut train CONFIG`: partition a model, train it with one Ray actor per device (or the
local executor) and report measured against predicted bytes and step time.

Writes into --out what `modelcut partition` writes, checkpoints/step-NNNNNN, loss.png, and
report.json / report.md with `training`, `loss`, `measured` and `predicted` sections, at the
end, as strict JSON (a NaN loss is null). A failed run leaves no report (nor the output folder
it created, unless it holds checkpoints). Ctrl-C, SIGTERM or a non-finite step stop with a
checkpoint of the last good state and a partial report (`stopped`); `--resume` continues
exactly.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from modelcut.commands import CommandError, arguments
from modelcut.commands.partition import (Setup, prepare_output, print_warnings, write_html,
                                         write_outputs)
from modelcut.units import format_size, format_time

HELP = "partition a model, train it on Ray actors and report measured vs predicted traffic"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help=HELP, description=HELP + ".")
    parser.add_argument("config", help="experiment config (YAML)")
    parser.add_argument("--devices", "-k", type=arguments.device_count, metavar="K",
                        help="number of devices (resizes the config's uniform or hierarchical "
                             "cluster)")
    parser.add_argument("--algorithm", "-a", metavar="A",
                        help="partitioning algorithm (default: the config's)")
    parser.add_argument("--objective", choices=("volume", "time_volume", "time", "throughput"),
                        metavar="O", help="partition objective (default: the config's)")
    parser.add_argument("--shard", choices=("auto", "off"),
                        help="operator sharding: split nodes heavier than a device's share when "
                             "that improves the objective (default: the config's, off)")
    parser.add_argument("--steps", type=arguments.int_in(1, 2**31 - 1), metavar="N",
                        help="train until step N (default: training.steps; a resumed run "
                             "continues its step count)")
    parser.add_argument("--executor", choices=("ray", "local"), default="ray",
                        help="one Ray actor per device (default) or the single-process local "
                             "executor")
    parser.add_argument("--address", metavar="ADDR",
                        help="join this Ray cluster (host:port or auto) instead of starting a "
                             "local Ray")
    parser.add_argument("--out", "-o", metavar="DIR",
                        help="output folder (default runs/<config name>; with --resume, the "
                             "resumed run's folder)")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue from the latest checkpoint of run folder DIR (or from "
                             "checkpoint folder DIR)")
    parser.add_argument("--checkpoint-every", type=arguments.node_count, metavar="N",
                        help="write a checkpoint every N steps (default: "
                             "training.checkpoint_every; 0: none)")
    parser.add_argument("--step-timeout", type=float, metavar="S",
                        help="seconds a step may take before its Ray actors count as hung and "
                             "are replaced (default: training.step_timeout, else 1000x the "
                             "predicted step time, 20x on a calibrated cluster, at least 60 s)")
    parser.add_argument("--on-nan", choices=("stop", "skip"),
                        help="on a NaN or infinite loss or gradient: stop with a checkpoint of "
                             "the last good state, or skip that step's update (Ray executor; "
                             "default: training.on_nan, stop)")
    parser.add_argument("--emulate", action="store_true",
                        help="emulate the config's cluster: every op and transfer padded to its "
                             "modelled time times a dilation; measured step times are in the "
                             "cluster's seconds (Ray executor)")
    parser.add_argument("--html", action="store_true",
                        help="also write report.html (tables, plots and the placed graph)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite the outputs of an earlier run in the output folder")
    return parser


def run(args: argparse.Namespace) -> int:
    from modelcut import training
    from modelcut.report import make_console

    check_arguments(args)
    training.check_address(args.address)            # fail fast, before any work
    console, status = make_console(), make_console(stderr=True)
    with status.status("building the graph ..."):
        setup = training.load_training_setup(
            args.config, devices=args.devices, algorithm=args.algorithm, steps=args.steps,
            checkpoint_every=args.checkpoint_every, objective=args.objective,
            step_timeout=args.step_timeout, on_nan=args.on_nan, shard=args.shard)
    if setup.on_nan == "skip" and args.executor != "ray":
        raise CommandError("--on-nan skip needs --executor ray (the local executor cannot drop "
                           "a step's update)")
    state, resumed_from = None, None
    if args.resume:
        resumed_from = training.find_checkpoint(args.resume)
        if setup.partition_options.get("shard") == "auto":   # its state is the sharded graph's
            setup = training.apply_sharding(setup, training.place(setup))
        state = training.load_checkpoint(resumed_from, setup)
        if int(state["step"]) >= setup.steps:
            console.print(f"nothing to train: checkpoint {resumed_from} is already at step "
                          f"{state['step']} (--steps {setup.steps}); no file was written "
                          "(raise --steps to continue)")
            return 0
    if args.out:
        out = Path(args.out)
    elif resumed_from is not None and resumed_from.parent.name == "checkpoints":
        out = training.run_folder(resumed_from)
    else:
        out = Path("runs") / setup.name
    created = not out.exists()
    prepare_train_output(out, args.force, resuming=resumed_from is not None
                         and resumed_from.resolve().is_relative_to(out.resolve()))
    try:
        with terminate_as_interrupt():
            return train_into(out, setup, args, state, resumed_from, console, status)
    except KeyboardInterrupt:                 # before training, or a second Ctrl-C
        remove_partial_output(out, created)
        saved = sorted((out / "checkpoints").glob("step-*"))
        print("modelcut: interrupted; no report was written" + (
            f"; the last checkpoint is {saved[-1]} (--resume {out})" if saved else ""),
            file=sys.stderr)
        return 130
    except BaseException:
        remove_partial_output(out, created)
        raise


def check_arguments(args: argparse.Namespace) -> None:
    """One-line errors for bad flag combinations and values argparse does not check."""
    if args.emulate and args.executor != "ray":
        raise CommandError("--emulate runs emulated devices on Ray actors; it needs "
                           "--executor ray")
    if args.address and args.executor != "ray":
        raise CommandError("--address joins a Ray cluster; it needs --executor ray")
    timeout = args.step_timeout
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise CommandError(f"--step-timeout: expected positive seconds, got {timeout}")


def train_into(out: Path, setup, args, state, resumed_from, console, status) -> int:
    """Partition (or take the checkpoint's placement), train, and write every output at the
    end (a partial report when training stopped early)."""
    from modelcut import training
    from modelcut.report import pipeline_hint, rich_table

    with status.status(f"partitioning {setup.graph.name} ({len(setup.graph):,} nodes per "
                       f"micro-batch) on {setup.cluster.k} devices ..."):
        if state is None:
            placement = training.place(setup)
            setup = training.apply_sharding(setup, placement)
        else:
            placement = training.placement_from_assignment(
                setup, state["metadata"]["assignment"], f"checkpoint {resumed_from}")
        plan = training.step_plan(setup, placement)
        simulation = training.simulate_step(setup, plan)
    predicted = training.predicted_summary(setup, placement, simulation)
    predicted["calibrated"] = training.is_calibrated(setup.cluster)
    # an emulated step lasts its prediction times the dilation, unknown before the first step
    timeout = setup.step_timeout or (None if args.emulate else training.default_step_timeout(
        predicted["step_time"], predicted["calibrated"]))
    dilation = None
    losses = list(state["metadata"]["losses"]) if state else []
    status.print(f"starting the {args.executor} executor ...")
    with training.open_executor(args.executor, setup, placement, address=args.address,
                                step_timeout=timeout, plan=plan, emulate=args.emulate) as executor:
        if state is not None:
            executor.load_state_dict(state)
        records, stopped = train_with_progress(executor, setup, losses, out, placement, status)
        if args.emulate and executor.emulation is not None:
            dilation = executor.emulation.dilation
        if stopped is not None and stopped["good_state"]:
            stopped["checkpoint"] = str(training.save_checkpoint(
                out / "checkpoints", executor, setup, losses, placement.assignment))
    measured = (training.measured_summary(records, setup.cluster.device_names, dilation)
                if records else None)
    partition_report, written = write_partition_outputs(setup, placement, simulation, out)
    report = training_report(partition_report, setup, args, losses, measured, predicted,
                             resumed_from, start=len(losses) - len(records),
                             step_timeout=timeout, stopped=stopped)
    written = written + write_training_outputs(report, out, html=args.html)
    for table in training_tables(report):
        console.print(rich_table(table))
    print_warnings(status, report.get("warnings", []))
    for note in report_notes(report):
        status.print(f"[bold yellow]{note}[/bold yellow]")
    if pipeline_hint(report):
        console.print(f"[yellow]hint:[/yellow] {pipeline_hint(report)}")
    names = sorted({p.name for p in written} | ({"checkpoints/"} if (out / "checkpoints")
                                                 .is_dir() else set()))
    console.print(f"wrote to {out}: {', '.join(names)}")
    return finish(stopped, out)


def finish(stopped: dict | None, out: Path) -> int:
    """The exit status, and the one line that says why training stopped early."""
    if stopped is None:
        return 0
    where = (f"wrote checkpoint {stopped['checkpoint']} and a partial report to {out}; "
             f"continue with --resume {out}" if stopped.get("checkpoint") else
             f"wrote a partial report to {out}; the last good state is the last checkpoint in "
             f"{out / 'checkpoints'}, if any")
    if stopped["reason"] == "non-finite":
        print(f"modelcut: error: {stopped['message']}; {where}", file=sys.stderr)
        return 2
    print(f"modelcut: interrupted by {stopped['reason']} at step {stopped['step']}; {where}",
          file=sys.stderr)
    return 130


@contextmanager
def _handling(signals, handler):
    """`handler` for `signals` inside the block (only the main thread can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does) while the command runs."""
    return _handling((signal.SIGTERM,), _interrupt)


@contextmanager
def stop_between_steps():
    """While training: the first SIGINT or SIGTERM asks the loop to stop after the current
    step (the list it yields receives the signal's name); a second one stops at once."""
    received: list[str] = []

    def ask(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)
    with _handling((signal.SIGINT, signal.SIGTERM), ask):
        yield received


def remove_partial_output(out: Path, created: bool) -> None:
    """After a failed run: remove the output folder it created unless it holds checkpoints."""
    if created and out.is_dir() and not any((out / "checkpoints").glob("step-*")):
        shutil.rmtree(out, ignore_errors=True)


def prepare_train_output(out: Path, force: bool, resuming: bool) -> None:
    """Create `out`: resuming into it is always allowed; otherwise a folder holding files needs
    `force`, which removes this command's outputs (and the old checkpoints) first."""
    if resuming:
        out.mkdir(parents=True, exist_ok=True)
        return
    prepare_output(out, force)
    (out / "loss.png").unlink(missing_ok=True)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


def write_partition_outputs(setup, placement, simulation: dict, out: Path
                            ) -> tuple[dict, list[Path]]:
    """placement.json, graph.dot and the partition plots, written by `modelcut partition`'s
    writer; returns the partition report (as JSON types) and the files written."""
    part = Setup(name=setup.name, graph=setup.graph, cluster=setup.cluster,
                 options=dict(setup.partition_options), schedule=setup.schedule,
                 source=setup.source, family=setup.family)
    _, written = write_outputs(part, placement, simulation, out)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return report, written


def train_with_progress(executor, setup, losses: list, out: Path, placement, console
                        ) -> tuple[list, dict | None]:
    """The training loop with a progress bar; returns the step records and None, or, when
    training stopped early (a signal, a NaN), what stopped it: reason, message, step, and
    whether the executor's state is good to checkpoint."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    from modelcut import training

    records: list = []
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[time]}/step"),
               TextColumn("{task.fields[bytes]}/step"), TimeRemainingColumn())
    stopped = None
    with Progress(*columns, console=console) as progress, stop_between_steps() as signals:
        task = progress.add_task("train", total=setup.steps, completed=executor.step_count,
                                 loss="-", time="-", bytes="-")

        def on_step(record):
            records.append(record)
            progress.update(task, completed=record.step + 1, loss=f"{record.loss:.4f}",
                            time=format_time(record.seconds),
                            bytes=format_size(int(record.link_bytes.sum())))
        try:
            training.run_steps(executor, setup, setup.steps, losses=losses,
                               checkpoint_dir=out / "checkpoints",
                               assignment=placement.assignment, on_step=on_step,
                               should_stop=lambda: bool(signals))
        except training.NonFiniteStep as e:
            stopped = {"reason": "non-finite", "message": str(e), "good_state": e.good_state,
                       "step": e.step}
        if signals and stopped is None and executor.step_count < setup.steps:
            stopped = {"reason": signals[0], "message": f"interrupted by {signals[0]}",
                       "good_state": True}
    if stopped is not None:
        stopped.setdefault("step", executor.step_count)
    return records, stopped


# ------------------------------------------------------------------ the report
def training_report(partition_report: dict, setup, args, losses: list, measured, predicted: dict,
                    resumed_from, start: int, step_timeout: float | None = None,
                    stopped: dict | None = None) -> dict:
    """The partition report plus the training sections (`stopped`: why a partial run ended)."""
    from modelcut.training import byte_mismatches

    names = setup.cluster.device_names
    problems = [] if measured is None else byte_mismatches(measured, predicted, names)
    ratio = (measured["step_time"] / predicted["step_time"]
             if measured is not None and predicted["step_time"] > 0 else None)
    return {**partition_report,
            "training": {"executor": args.executor, "address": args.address,
                         "steps": setup.steps, "first_step": start,
                         "resumed_from": str(resumed_from) if resumed_from else None,
                         "micro_batches": setup.micro_batches, "batch": setup.batch,
                         "schedule": setup.schedule, "optimizer": setup.optimizer,
                         "seed": setup.seed, "checkpoint_every": setup.checkpoint_every,
                         "step_timeout": step_timeout if args.executor == "ray" else None,
                         "on_nan": setup.on_nan, "max_recoveries": setup.max_recoveries,
                         "stopped": None if stopped is None else {
                             k: v for k, v in stopped.items() if k != "good_state"}},
            "loss": [float(x) for x in losses],
            "measured": measured, "predicted": predicted,
            "agreement": {"bytes_equal": measured is not None and not problems,
                          "problems": problems, "step_time_ratio": ratio}}


def training_tables(report: dict) -> list:
    """Training summary, measured vs predicted, and per-actor tables (modelcut.report.Table)."""
    from modelcut.report import Table, pipeline_rows

    t, losses, measured, predicted = (report["training"], report["loss"], report["measured"],
                                      report["predicted"])
    rows = [("executor", t["executor"]), ("steps", f"{t['first_step']} -> {t['steps']}"),
            ("micro-batches", f"{t['micro_batches']} of {t['batch'] // t['micro_batches']}"),
            ("schedule", t["schedule"]), ("optimizer", t["optimizer"]["name"])]
    rows += pipeline_rows(report.get("totals", {}))
    if losses:
        rows += [("first loss", f"{losses[0]:.4f}"), ("final loss", f"{losses[-1]:.4f}")]
    tables = [Table("Training", ("setting", "value"), tuple(rows), (False, True))]
    if measured is None:
        return tables
    names = [d["name"] for d in report["devices"]]

    def compared(label: str, got: int, want: int) -> tuple[str, str, str, str]:
        return label, f"{got:,}", f"{want:,}", "yes" if got == want else "NO"
    rows = [compared("bytes per step", measured["bytes_per_step"], predicted["step_volume"])]
    for a, src in enumerate(names):
        for b, dst in enumerate(names):
            got, want = measured["link_bytes"][a][b], predicted["link_bytes"][a][b]
            if a != b and (got or want):
                rows.append(compared(f"  {src} -> {dst}", got, want))
    uncalibrated = "" if predicted.get("calibrated", True) else ", uncalibrated"
    ratio = report["agreement"].get("step_time_ratio")
    rows.append(("step time", format_time(measured["step_time"]),
                 format_time(predicted["step_time"]) + f" ({predicted['schedule']}"
                 f"{uncalibrated})", "-" if ratio is None else f"{ratio:.2f}x"))
    tables.append(Table("Measured vs predicted (per step)",
                        ("quantity", "measured", "predicted", "equal / ratio"), tuple(rows),
                        (False, True, True, False)))
    rows = tuple((a["name"], format_time(a["compute_seconds"]), format_time(a["wait_seconds"]),
                  f"{100 * a['utilisation']:.1f}%") for a in measured["actors"])
    tables.append(Table(f"Actors (mean over {measured['steps_timed']} step(s), "
                        f"{format_size(measured['bytes_per_step'])} sent per step)",
                        ("device", "compute", "wait", "utilisation"), rows,
                        (False, True, True, True)))
    return tables


def report_notes(report: dict) -> list[str]:
    """Warnings and notes: byte mismatches, an uncalibrated prediction, an early stop."""
    notes = [f"warning: {p}" for p in report["agreement"]["problems"]]
    predicted, ratio = report["predicted"], report["agreement"].get("step_time_ratio")
    if not predicted.get("calibrated", True):
        measured = "" if ratio is None else f" (measured / predicted = {ratio:.2f}x)"
        notes.append("note: the cluster is not calibrated, so the predicted step time uses "
                     f"nominal device speeds{measured}; run `modelcut calibrate` to measure "
                     "this machine's costs and predict from them")
    stopped = report["training"].get("stopped")
    if stopped:
        notes.append(f"note: training stopped early at step {stopped['step']}: "
                     f"{stopped['message']}")
    if report["measured"] is None and not stopped:
        notes.append("note: no step was trained")
    return notes


def write_training_outputs(report: dict, out: Path, html: bool = False) -> list[Path]:
    """report.json (strict JSON), report.md, loss.png and with `html` report.html (the
    partition plots are already there)."""
    from modelcut.report import markdown_table, report_tables
    from modelcut.training import dumps_strict

    finite = any(math.isfinite(x) for x in report["loss"])
    written = [loss_plot(report["loss"], out / "loss.png")] if finite else []
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(dumps_strict(report) + "\n", encoding="utf-8")
    lines = [f"# modelcut train: {report['graph']['name']} on {report['cluster']['name']}", ""]
    lines += [markdown_table(t) for t in training_tables(report)]
    notes = report_notes(report)
    lines += [f"**{n}**" for n in notes] + ([""] if notes else [])
    lines += ["## Placement", ""] + [markdown_table(t) for t in report_tables(report)]
    images = [p.name for p in written] + ["load_memory.png", "schedule.png", "traffic.png"]
    lines += [f"![{Path(p).stem}]({p})" for p in images if (out / p).exists()]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    written += [json_path, md_path]
    if html:
        written.append(write_training_html(report, out, notes))
    return written


def write_training_html(report: dict, out: Path, notes: list[str]) -> Path:
    """report.html: the partition page with the training tables, notes and loss plot first."""
    import html as escape

    from modelcut.html_report import html_table

    captions = (("Training loss", "loss.png"), ("Load and memory per device", "load_memory.png"),
                ("Simulated schedule", "schedule.png"), ("Link traffic", "traffic.png"))
    images = [(c, out / name) for c, name in captions if (out / name).exists()]
    dot = out / "graph.dot"
    training = ['<section id="training">', "<h2>Training</h2>",
                *[html_table(t) for t in training_tables(report)],
                *[f'<p class="note">{escape.escape(n)}</p>' for n in notes], "</section>"]
    return write_html(report, images, dot.read_text(encoding="utf-8") if dot.exists() else None,
                      out / "report.html", [], "\n".join(training))


def loss_plot(losses: list[float], path: Path) -> Path:
    """The loss per step."""
    from matplotlib.figure import Figure

    from modelcut import plots

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(range(len(losses)), losses, color=plots.FORWARD_COLOUR, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"Training loss ({len(losses)} steps, final {losses[-1]:.4g})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return plots._save(fig, path)
