"""`modelcut train CONFIG`: partition a model, train it with one Ray actor per device (or the
local executor) and report measured against predicted bytes and step time.

Writes into --out: everything `modelcut partition` writes (placement.json, graph.dot and the
partition plots), checkpoints/step-NNNNNN (every training.checkpoint_every steps and after the
last), loss.png, and report.json / report.md holding the partition report plus `training`,
`loss` (every step), `measured` and `predicted` sections.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from modelcut.commands import CommandError

HELP = "partition a model, train it on Ray actors and report measured vs predicted traffic"
TRAIN_OUTPUTS = ("loss.png",)
EXECUTORS = ("ray", "local")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help=HELP, description=HELP + ".")
    parser.add_argument("config", help="experiment config (YAML)")
    parser.add_argument("--devices", "-k", type=int, metavar="K",
                        help="number of devices (resizes the config's uniform or hierarchical "
                             "cluster)")
    parser.add_argument("--algorithm", "-a", metavar="A",
                        help="partitioning algorithm (default: the config's)")
    parser.add_argument("--objective", choices=("volume", "time_volume", "time", "throughput"),
                        metavar="O", help="partition objective (default: the config's)")
    parser.add_argument("--steps", type=int, metavar="N",
                        help="train until step N (default: training.steps; a resumed run "
                             "continues its step count)")
    parser.add_argument("--executor", choices=EXECUTORS, default="ray",
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
    parser.add_argument("--checkpoint-every", type=int, metavar="N",
                        help="write a checkpoint every N steps (default: "
                             "training.checkpoint_every; 0: none)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite the outputs of an earlier run in the output folder")
    return parser


def run(args: argparse.Namespace) -> int:
    from modelcut import training
    from modelcut.report import make_console, rich_table

    for flag in ("devices", "steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise CommandError(f"--{flag}: expected a positive integer, got {getattr(args, flag)}")
    if args.address and args.executor != "ray":
        raise CommandError("--address joins a Ray cluster; it needs --executor ray")
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        raise CommandError(f"--checkpoint-every: expected a non-negative integer, got "
                           f"{args.checkpoint_every}")
    console, status = make_console(), make_console(stderr=True)
    with status.status("building the graph ..."):
        setup = training.load_training_setup(
            args.config, devices=args.devices, algorithm=args.algorithm, steps=args.steps,
            checkpoint_every=args.checkpoint_every, objective=args.objective)
    state, resumed_from = None, None
    if args.resume:
        resumed_from = training.find_checkpoint(args.resume)
        state = training.load_checkpoint(resumed_from, setup)
    if args.out:
        out = Path(args.out)
    elif resumed_from is not None and resumed_from.parent.name == "checkpoints":
        out = training.run_folder(resumed_from)
    else:
        out = Path("runs") / setup.name
    prepare_train_output(out, args.force, resuming=resumed_from is not None
                         and _inside(resumed_from, out))
    with status.status(f"partitioning {setup.graph.name} ({len(setup.graph):,} nodes per "
                       f"micro-batch) on {setup.cluster.k} devices ..."):
        if state is None:
            placement = training.place(setup)
        else:
            placement = training.placement_from_assignment(
                setup, state["metadata"]["assignment"], f"checkpoint {resumed_from}")
        simulation = training.simulate_step(setup, placement)
        partition_report = write_partition_outputs(setup, placement, simulation, out)
    losses = list(state["metadata"]["losses"]) if state else []
    status.print(f"starting the {args.executor} executor ...")
    with training.open_executor(args.executor, setup, placement,
                                address=args.address) as executor:
        if state is not None:
            executor.load_state_dict(state)
        records = train_with_progress(executor, setup, losses, out, placement, status)
    predicted = training.predicted_summary(setup, placement, simulation)
    measured = training.measured_summary(records, setup.cluster.device_names) if records else None
    report = training_report(partition_report, setup, args, losses, measured, predicted,
                             resumed_from, start=len(losses) - len(records))
    written = write_training_outputs(report, out)
    for table in training_tables(report):
        console.print(rich_table(table))
    if measured is None:
        console.print(f"[yellow]note:[/yellow] the checkpoint is already at step {len(losses)}; "
                      "nothing to train (raise --steps to continue)")
    from modelcut.report import pipeline_hint
    if pipeline_hint(report):
        console.print(f"[yellow]hint:[/yellow] {pipeline_hint(report)}")
    for problem in report["agreement"]["problems"]:
        status.print(f"[bold yellow]warning:[/bold yellow] {problem}")
    console.print(f"wrote {', '.join(p.name for p in written)} and placement.json to {out}")
    return 0


def _inside(checkpoint_folder: Path, out: Path) -> bool:
    """Whether a checkpoint folder lies inside the run folder `out` (resuming into it)."""
    try:
        checkpoint_folder.resolve().relative_to(out.resolve())
        return True
    except ValueError:
        return False


def prepare_train_output(out: Path, force: bool, resuming: bool) -> None:
    """Create `out`: resuming into it is always allowed; otherwise a folder holding files needs
    `force`, which removes this command's outputs (and the old checkpoints) first."""
    from modelcut.commands.partition import prepare_output

    if resuming:
        out.mkdir(parents=True, exist_ok=True)
        return
    prepare_output(out, force)
    for name in TRAIN_OUTPUTS:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


def write_partition_outputs(setup, placement, simulation: dict, out: Path) -> dict:
    """placement.json, graph.dot and the partition plots, written by `modelcut partition`'s
    writer; returns the partition report."""
    from modelcut.commands.partition import Setup, write_outputs

    options = dict(setup.partition_options)
    part = Setup(name=setup.name, graph=setup.graph, cluster=setup.cluster, options=options,
                 schedule=setup.schedule, source=setup.source, family=setup.family)
    write_outputs(part, placement, simulation, out, argparse.Namespace(max_nodes=300, html=False))
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def train_with_progress(executor, setup, losses: list, out: Path, placement, console) -> list:
    """The training loop with a rich progress bar: step, loss, step time, bytes per step."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    from modelcut import training
    from modelcut.units import format_size, format_time

    start = executor.step_count
    if start >= setup.steps:
        return []
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[time]}/step"),
               TextColumn("{task.fields[bytes]}/step"), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=setup.steps, completed=start, loss="-",
                                 time="-", bytes="-")

        def on_step(record):
            progress.update(task, completed=record.step + 1, loss=f"{record.loss:.4f}",
                            time=format_time(record.seconds),
                            bytes=format_size(int(record.link_bytes.sum())))
        return training.run_steps(executor, setup, setup.steps, losses=losses,
                                  checkpoint_dir=out / "checkpoints",
                                  assignment=placement.assignment, on_step=on_step)


# ------------------------------------------------------------------ the report
def training_report(partition_report: dict, setup, args, losses: list, measured, predicted: dict,
                    resumed_from, start: int) -> dict:
    """The partition report plus the training sections."""
    from modelcut.training import byte_mismatches

    names = setup.cluster.device_names
    problems = [] if measured is None else byte_mismatches(measured, predicted, names)
    return {**partition_report,
            "training": {"executor": args.executor, "address": args.address,
                         "steps": setup.steps, "first_step": start,
                         "resumed_from": str(resumed_from) if resumed_from else None,
                         "micro_batches": setup.micro_batches, "batch": setup.batch,
                         "schedule": setup.schedule, "optimizer": setup.optimizer,
                         "seed": setup.seed, "checkpoint_every": setup.checkpoint_every},
            "loss": [float(x) for x in losses],
            "measured": measured, "predicted": predicted,
            "agreement": {"bytes_equal": measured is not None and not problems,
                          "problems": problems}}


def training_tables(report: dict) -> list:
    """Training summary, measured vs predicted, and per-actor tables (modelcut.report.Table)."""
    from modelcut.report import Table, pipeline_rows
    from modelcut.units import format_size, format_time

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
    same = lambda a, b: "yes" if a == b else "NO"  # noqa: E731
    rows = [("bytes per step", f"{measured['bytes_per_step']:,}",
             f"{predicted['step_volume']:,}",
             same(measured["bytes_per_step"], predicted["step_volume"]))]
    for a, src in enumerate(names):
        for b, dst in enumerate(names):
            got, want = measured["link_bytes"][a][b], predicted["link_bytes"][a][b]
            if a != b and (got or want):
                rows.append((f"  {src} -> {dst}", f"{got:,}", f"{want:,}", same(got, want)))
    rows.append(("step time", format_time(measured["step_time"]),
                 format_time(predicted["step_time"]) + f" ({predicted['schedule']})", "-"))
    tables.append(Table("Measured vs predicted (per step)",
                        ("quantity", "measured", "predicted", "equal"), tuple(rows),
                        (False, True, True, False)))
    rows = tuple((a["name"], format_time(a["compute_seconds"]), format_time(a["wait_seconds"]),
                  f"{100 * a['utilisation']:.1f}%") for a in measured["actors"])
    tables.append(Table(f"Actors (mean over {measured['steps_timed']} step(s), "
                        f"{format_size(measured['bytes_per_step'])} sent per step)",
                        ("device", "compute", "wait", "utilisation"), rows,
                        (False, True, True, True)))
    return tables


def write_training_outputs(report: dict, out: Path) -> list[Path]:
    """report.json, report.md and loss.png (the partition plots are already there)."""
    from modelcut.report import markdown_table, report_tables

    written = [loss_plot(report["loss"], out / "loss.png")] if report["loss"] else []
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    g, c = report["graph"], report["cluster"]
    lines = [f"# modelcut train: {g['name']} on {c['name']}", ""]
    lines += [markdown_table(t) for t in training_tables(report)]
    problems = report["agreement"]["problems"]
    lines += [f"**Warning:** {p}" for p in problems] + ([""] if problems else [])
    lines += ["## Placement", ""] + [markdown_table(t) for t in report_tables(report)]
    images = [p.name for p in written] + ["load_memory.png", "schedule.png", "traffic.png"]
    lines += [f"![{Path(p).stem}]({p})" for p in images if (out / p).exists()]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written + [json_path, md_path]


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
