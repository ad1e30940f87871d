"""Command line: ``python -m pruning_ir`` (or ``pruning-ir``) ``inspect`` and ``prune``.

A model is named one of two ways:

* ``package.module:factory``: a function of no arguments returning the model, or
  ``(model, example_inputs)``, or ``(model, example_inputs, example_kwargs)``;
* a directory with a Hugging Face ``config.json`` (and weights, if any: loaded with
  ``from_pretrained``, else the model is built from the config with random weights), with
  ``--hf-class`` the class to build (default ``AutoModel``).

Example inputs come from the factory, from ``--input 1,3,224,224`` (random floats, repeatable for
several positional inputs) or ``--input-ids 1,16`` (random token ids, keyword ``input_ids``), or,
for Hugging Face models, from the config (token ids and a mask, or ``pixel_values``).

``inspect`` prints the per-layer table (module, widths, label groups, prunable or why not, share
of MACs and parameters; ``--kernel-axes`` adds groups on other axes) and ``ir.report()``.
``analyze`` runs the sensitivity analysis of :mod:`pruning_ir.workflows` with ``--eval
package.module:function`` (``function(model) -> score``), prints a table per group and ratio,
and keeps the resumable ``.sens`` file (``--plot`` draws the curves). ``prune`` selects labels
(``--ratio`` with ``--selector uniform|global``, or ``--macs F``: the knapsack to F of the MACs),
scored by a data-free criterion (``--criterion``, default L1 norm), prunes, and writes
``save_pruned``'s directory plus ``report.md`` (and ``widths.png`` and ``costs.png`` with
``--plots``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._rewrite.recipe import import_object
from .errors import InvalidInputError, PruningIRError

log = logging.getLogger(__name__)

CRITERIA = ("l1", "l2", "fpgm", "bn", "random")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 1,3,224,224") from None
    if not shape or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return shape


def _hf_model(directory: Path, class_name: str) -> nn.Module:
    import transformers

    config = transformers.AutoConfig.from_pretrained(directory)
    cls = getattr(transformers, class_name, None)
    if cls is None:
        raise InvalidInputError(f"transformers has no class {class_name!r} (--hf-class).")
    weights = any((directory / f).exists() for f in ("model.safetensors", "pytorch_model.bin",
                                                     "model.safetensors.index.json"))
    if weights:
        model = cls.from_pretrained(directory)
    else:  # Auto classes build from a config with from_config, model classes with their constructor
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    return model.eval()  # type: ignore[no-any-return]


def _hf_inputs(model: nn.Module, batch: int = 1, tokens: int = 16) -> tuple[tuple[Any, ...], dict[str, Any]]:
    config = model.config
    main = getattr(model, "main_input_name", "input_ids")
    gen = torch.Generator().manual_seed(0)
    if main == "pixel_values":
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else size[0]
        channels = getattr(config, "num_channels", 3)
        return (), {"pixel_values": torch.randn(batch, channels, size, size, generator=gen)}
    vocab = int(getattr(config, "vocab_size", 100) or 100)
    ids = torch.randint(0, vocab, (batch, tokens), generator=gen)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = ids.clone()
    return (), kwargs


def load_model(spec: str, args: argparse.Namespace) -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    """The model and example inputs named on the command line (see the module docstring)."""
    path = Path(spec)
    call_args: tuple[Any, ...] = ()
    call_kwargs: dict[str, Any] = {}
    if path.is_dir() and (path / "config.json").exists():
        model = _hf_model(path, args.hf_class)
        call_args, call_kwargs = _hf_inputs(model)
    elif ":" in spec:
        made = import_object(spec)()
        if isinstance(made, tuple):
            model = made[0]
            call_args = made[1] if isinstance(made[1], tuple) else (made[1],) if len(made) > 1 else ()
            call_kwargs = dict(made[2]) if len(made) > 2 else {}
        else:
            model = made
    else:
        raise InvalidInputError(f"{spec!r} names no model: give 'package.module:factory' or a directory with a "
                                "Hugging Face config.json.")
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"{spec!r} gave a {type(model).__name__}, not an nn.Module.")
    gen = torch.Generator().manual_seed(0)
    if args.input:
        call_args = tuple(torch.randn(s, generator=gen) for s in args.input)
    if args.input_ids:
        vocab = int(getattr(getattr(model, "config", None), "vocab_size", 100) or 100)
        call_kwargs = {**call_kwargs, "input_ids": torch.randint(0, vocab, args.input_ids, generator=gen)}
    if not call_args and not call_kwargs:
        raise InvalidInputError(f"no example inputs for {spec!r}: pass --input 1,3,224,224 (or --input-ids 1,16), or "
                                "return (model, example_inputs) from the factory.")
    return model.eval(), call_args, call_kwargs


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _criterion(name: str, ir: Any) -> None:
    from . import BNScaleCriterion, FPGMCriterion, L1NormCriterion, L2NormCriterion, RandomCriterion

    cls: Any = {"l1": L1NormCriterion, "l2": L2NormCriterion, "fpgm": FPGMCriterion, "bn": BNScaleCriterion,
           "random": RandomCriterion}[name]
    cls(ir).score()


def _select(ir: Any, args: argparse.Namespace, call: tuple[tuple[Any, ...], dict[str, Any]]) -> list[Any]:
    from . import GlobalScoreLabelSelector, KnapsackLabelSelector, MacsLatency, UniformLabelSelector

    if args.macs is not None:
        fn = MacsLatency(call[0], call[1])
        args.target = args.macs * fn(ir.model)
        selector = KnapsackLabelSelector(args.target, fn, verbose=False)
        labels = selector.select(ir)
        args.history = selector.history
        return list(labels)
    if args.ratio is None:
        raise InvalidInputError("prune needs --ratio R (with --selector) or --macs F.")
    cls = GlobalScoreLabelSelector if args.selector == "global" else UniformLabelSelector
    return list(cls(args.ratio).select(ir))


def cmd_inspect(args: argparse.Namespace) -> int:
    from . import PruningIR
    from .layers import format_layers, layer_table

    model, a, k = load_model(args.model, args)
    ir = PruningIR(model, example_inputs=a, example_kwargs=k)
    _out(format_layers(layer_table(ir, kernel_axes=args.kernel_axes), markdown=args.markdown))
    _out("")
    _out(ir.report())
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from . import MacsModel, ParamsModel, PruningIR, save_pruned
    from .layers import format_layers, layer_table

    model, a, k = load_model(args.model, args)
    ir = PruningIR(model, example_inputs=a, example_kwargs=k)
    _criterion(args.criterion, ir)
    args.history = None
    labels = _select(ir, args, (a, k))
    pruned = ir.prune(labels=labels)
    out = Path(args.out)
    save_pruned(pruned, out, constructor=args.model if ":" in args.model and not Path(args.model).is_dir()
                and _returns_module(args.model) else None)
    macs = (MacsModel(ir).baseline(), MacsModel(pruned).baseline())
    params = (ParamsModel(ir).baseline(), ParamsModel(pruned).baseline())
    lines = [f"# pruning_ir prune: {args.model}", "",
             f"{len(labels)} labels removed ({args.criterion} scores; "
             + (f"knapsack to {args.macs} of the MACs" if args.macs is not None else f"{args.selector} {args.ratio}")
             + ").", "",
             "| | before | after | ratio |", "|---|---|---|---|",
             f"| MACs | {macs[0]} | {macs[1]} | {macs[1] / max(macs[0], 1):.3f} |",
             f"| parameters | {params[0]} | {params[1]} | {params[1] / max(params[0], 1):.3f} |", "",
             "## Layers after pruning", "", format_layers(layer_table(pruned), markdown=True), "",
             "## Rewrite log", "", *[f"- {line}" for line in pruned.rewrite_log], "",
             "## IR report (before pruning)", "", "```", ir.report(), "```", ""]
    (out / "report.md").write_text("\n".join(lines))
    if args.plots:
        from .plots import plot_costs, plot_search, plot_widths

        plot_widths(ir, pruned, out / "widths.png")
        plot_costs(ir, pruned, out / "costs.png")
        if args.history:
            plot_search(args.history, out / "search.png", target=args.target)
    _out(f"MACs {macs[1] / max(macs[0], 1):.3f}, parameters {params[1] / max(params[0], 1):.3f} of the original; "
         f"written {out} (load it with pruning_ir.load_pruned)")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .workflows import get_pruning_runner

    model, a, k = load_model(args.model, args)
    fn = import_object(args.eval)
    ratios = [float(r) for r in args.ratios.split(",")]
    runner = get_pruning_runner(model, a, "iterative", example_kwargs=k, cache_dir=args.cache_dir)
    sens = runner.ana(lambda m: fn(m), ratios=ratios, progress=args.progress)
    head = ["group", "size", *[f"{r:g}" for r in ratios]]
    rows = []
    for gid, entry in sorted(sens["groups"].items(), key=lambda kv: int(kv[0])):
        scores = {int(n): v for n, v in entry["scores"].items()}
        cells = [f"g{gid} {entry['describe'][:40]}", str(entry["size"])]
        for r in ratios:  # the count analysed for this ratio: the largest not above r * size
            below = [n for n in scores if n <= int(r * entry["size"])]
            cells.append(f"{scores[max(below)]:.4g}" if below else "-")
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    _out(f"baseline {sens['baseline']:.4g}; {runner.sensitivity_path}")
    _out("\n".join([fmt.format(*head), *(fmt.format(*r) for r in rows)]))
    if args.plot:
        from .plots import plot_sensitivity

        _out(f"written {plot_sensitivity(sens, args.plot)}")
    return 0


def _returns_module(spec: str) -> bool:
    """Whether the factory returns the model alone (so ``load_pruned`` can call it as the constructor)."""
    try:
        with torch.device("meta"):
            return isinstance(import_object(spec)(), nn.Module)
    except Exception:  # the factory does not run on meta: the loader passes base_model
        return False


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pruning-ir", description="Dependency-aware structured pruning.")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, helptext in (("inspect", "per-layer table: widths, label groups, prunable or why not, MACs/params"),
                           ("prune", "prune, save with save_pruned, write a report (and plots)"),
                           ("analyze", "sensitivity analysis: a score per group and ratio (resumable file)")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("model", help="'package.module:factory' or a directory with a Hugging Face config.json")
        p.add_argument("--input", type=_shape, action="append", help="a float input of this shape (repeatable)")
        p.add_argument("--input-ids", type=_shape, help="token ids of this shape, passed as input_ids")
        p.add_argument("--hf-class", default="AutoModel", help="transformers class for a config directory")
        if name == "inspect":
            p.add_argument("--kernel-axes", action="store_true", help="also show groups on other axes")
            p.add_argument("--markdown", action="store_true", help="a Markdown table")
        elif name == "analyze":
            p.add_argument("--eval", required=True, help="'package.module:function' scoring a model (higher = better)")
            p.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
            p.add_argument("--cache-dir", default=".pruning_ir", help="where the .sens file goes")
            p.add_argument("--plot", help="write the sensitivity curves to this PNG")
            p.add_argument("--progress", action="store_true", help="a progress bar (tqdm)")
        else:
            p.add_argument("--out", required=True, help="directory to write (save_pruned files, report.md)")
            p.add_argument("--selector", choices=("uniform", "global"), default="uniform")
            p.add_argument("--ratio", type=float, help="fraction of labels to remove (uniform: of each group)")
            p.add_argument("--macs", type=float, help="knapsack to this fraction of the MACs instead")
            p.add_argument("--criterion", choices=CRITERIA, default="l1", help="data-free scores (default l1)")
            p.add_argument("--plots", action="store_true", help="write widths.png and costs.png (matplotlib)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pruning-ir`` / ``python -m pruning_ir``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        commands = {"inspect": cmd_inspect, "prune": cmd_prune, "analyze": cmd_analyze}
        return commands[args.command](args)
    except PruningIRError as exc:
        sys.stderr.write(f"pruning-ir {args.command}: {exc}\n")
        return 2
