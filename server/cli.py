"""The ``loom`` command: serve | run | validate | convert | nodes.

Exit codes: 0 ok, 2 invalid workflow (one error per line; also when only some outputs are invalid: the
server would run the others, but a command line run that cannot make everything it was asked for makes
nothing), 1 run failed. Output piped into a program that stops reading (``loom convert x | head``) ends
quietly.
Heavy libraries (torch, diffusers) load only when a command needs them, so ``loom --help`` is instant.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from loom.server.budget import ResourceBudget

if TYPE_CHECKING:
    from loom.server.validation import ValidationResult

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2

DEFAULT_PORT = 8188


class UsageError(Exception):
    """A problem with what the user asked for (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    from loom.server.worker import PREVIEW_METHODS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base-dir", type=Path, default=None,
                        help="folder holding models/, input/, output/, temp/ (default: current directory)")
    common.add_argument("--models-dir", type=Path, default=None,
                        help="an existing models/ folder, e.g. a ComfyUI installation's")
    common.add_argument("--extra-model-paths", type=Path, action="append", default=[],
                        help="ComfyUI extra_model_paths.yaml (repeatable)")
    common.add_argument("--nodes", type=Path, action="append", default=[], metavar="PACK",
                        help="load a node pack (a .py file or a package folder); repeatable")
    common.add_argument("--allow-pickle", action="store_true", default=None,
                        help="allow pickled .ckpt/.pt model files (loaded with weights_only=True); "
                        "env LOOM_ALLOW_PICKLE=1")
    common.add_argument("--device", default=None, metavar="DEVICE",
                        help="where models compute: cpu, cuda, cuda:1, ... (default: CUDA when present, else "
                        "the CPU); env LOOM_DEVICE")
    common.add_argument("--cpu", dest="device", action="store_const", const="cpu",
                        help="compute on the CPU (ComfyUI's flag; the same as --device cpu)")
    common.add_argument("--force-fp32", action="store_true", default=None,
                        help="compute every model in float32; env LOOM_FORCE_FP32=1")
    common.add_argument("--fast", action="store_true", default=None,
                        help="the measured fast path: bfloat16 diffusion on CPUs that have it, 1.7-2.9x faster "
                        "steps, visually identical but not bit-identical to ComfyUI (a workflow's "
                        "extra.loom.fast overrides it); env LOOM_FAST=1")
    common.add_argument("--model-cache-bytes", default=None, metavar="SIZE",
                        help="keep at most this many bytes of models loaded, e.g. 12G (default: as memory "
                        "allows); env LOOM_MODEL_CACHE_BYTES")

    parser = argparse.ArgumentParser(prog="loom", description="Node-graph workflows for diffusion image "
                                     "generation, compatible with ComfyUI workflows and its API.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="start the editor and the HTTP/WebSocket API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--token", default=None,
                       help="API token (required on non-loopback addresses; generated when not given)")
    serve.add_argument("--no-browser", action="store_true", help="do not open the editor in a browser")
    serve.add_argument("--workflow", type=Path, default=None,
                       help="workflow the editor opens first (default: workflows/txt2img.json)")
    serve.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[], metavar="HOST",
                       help="extra Host name to answer to, e.g. behind a reverse proxy (repeatable)")
    serve.add_argument("--allowed-origin", dest="allowed_origins", action="append", default=[],
                       metavar="ORIGIN", help="extra Origin allowed to call the API, e.g. https://x.example")
    serve.add_argument("--expose-tracebacks", action="store_true",
                       help="include tracebacks in execution errors sent to clients (debugging only)")
    serve.add_argument("--preview-method", choices=PREVIEW_METHODS, default=None,
                       help="ComfyUI's step previews: none, or auto/latent2rgb/taesd to send them to every "
                            "prompt's client (taesd decodes as latent2rgb); without this flag only clients "
                            "that ask get them (Loom's editor does)")
    serve.add_argument("--workers", choices=("process", "thread"), default="process",
                       help="where prompts run: process (default; a worker process, so a hung node or a crash "
                            "costs one prompt, not the server) or thread (in the server process)")
    serve.add_argument("--lanes", type=int, default=1, metavar="N",
                       help="run N worker processes side by side on one queue; each free one takes a prompt "
                            "whose models it already holds (model-affinity routing; needs --workers process)")
    serve.add_argument("--backend", choices=("local", "ray"), default="local",
                       help="local (default: --workers on this machine) or ray: prompts run on Ray actors, one "
                            "per GPU or --ray-actors N, routed by model affinity (pip install 'loom[ray]'; "
                            "see docs/ray.md)")
    serve.add_argument("--ray-address", dest="ray_address", default=None, metavar="ADDR",
                       help="--backend ray: the Ray cluster to join (auto, HOST:PORT or ray://HOST:10001); "
                            "default: start a local one")
    serve.add_argument("--ray-actors", dest="ray_actors", type=int, default=None, metavar="N",
                       help="--backend ray: N LoomWorker actors (default: one per GPU in the cluster, or 1)")
    serve.add_argument("--prompt-timeout", dest="prompt_timeout", type=float, default=None, metavar="SECONDS",
                       help="fail a prompt that runs longer than this with error type 'timeout' (its worker "
                            "process is stopped and replaced; needs --workers process; default: no limit)")
    limits = ResourceBudget()
    serve.add_argument("--max-pixels", type=int, default=limits.max_pixels, metavar="N",
                       help="refuse a node asking for more than width x height x batch pixels "
                            f"(default {limits.max_pixels:,}; 0: no limit)")
    serve.add_argument("--max-batch", type=int, default=limits.max_batch, metavar="N",
                       help=f"refuse a batch_size over N (default {limits.max_batch}; 0: no limit)")
    serve.add_argument("--max-steps", type=int, default=limits.max_steps, metavar="N",
                       help=f"refuse a sampler with more than N steps (default {limits.max_steps}; 0: no limit)")

    run = commands.add_parser("run", parents=[common], help="run a workflow headless, or sweep its inputs",
                              epilog="Sweeps: --seed 1-8 or 1,5,9 runs once per seed; --set NODE.INPUT=A,B,C once "
                              "per value (a JSON list for texts); several --set lists run their product, or "
                              "with --zip their pairs. Files are named by the swept values; a table of "
                              "values, files and seconds ends the sweep.")
    run.add_argument("workflow", type=Path, nargs="+",
                     help="UI or API workflow JSON, or a PNG/WebP with one embedded (several: each is run)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="change an input; NODE is a node id, or a title or type that is unique; "
                     "VALUE may be a list to sweep: 4,6,8 or a JSON list")
    run.add_argument("--seed", default=None, metavar="SEEDS",
                     help="set every seed input to this value; a range or list sweeps: 1-8, 1,5,9, 1-3,10")
    run.add_argument("--zip", action="store_true",
                     help="pair the swept lists (equal lengths) instead of running their product")
    run.add_argument("--jobs", action="store_true",
                     help="queue the runs on a running `loom serve` (see --server) instead of in this process")
    run.add_argument("--server", default=None, metavar="URL",
                     help="the `loom serve` to queue on (implies --jobs; default http://127.0.0.1:8188); "
                     "its token is read from $LOOM_TOKEN")
    run.add_argument("--contact-sheet", type=Path, default=None, metavar="PNG",
                     help="save every image of the sweep in one grid, labelled by the swept values")
    run.add_argument("--summary-json", type=Path, default=None, metavar="FILE",
                     help="write the sweep's runs (values, files, seconds, nodes run and cached) as JSON")
    run.add_argument("--output-dir", type=Path, default=None, help="where SaveImage writes (default output/)")
    run.add_argument("--quiet", action="store_true", help="no progress output")

    validate = commands.add_parser("validate", parents=[common], help="check a workflow without running it")
    validate.add_argument("workflow", type=Path)

    convert = commands.add_parser("convert", parents=[common], help="print a workflow in the API format")
    convert.add_argument("workflow", type=Path)

    nodes = commands.add_parser("nodes", parents=[common], help="list node types, or describe one")
    nodes.add_argument("name", nargs="?")
    nodes.add_argument("--json", action="store_true", help="print /object_info JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"serve": cmd_serve, "run": cmd_run, "validate": cmd_validate, "convert": cmd_convert,
                "nodes": cmd_nodes}
    try:
        code = handlers[args.command](args)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
        return code
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_FAILED
    except UsageError as problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILED


def _drop_stdout() -> None:
    """The reader of stdout went away (``loom convert x | head``): send what is left to /dev/null.

    As Python's documentation of SIGPIPE recommends, so that the interpreter's last flush at exit does not
    raise a second BrokenPipeError.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # stdout is no file (tests capture it)
        pass


# --------------------------------------------------------------------------------------------
# set-up shared by the commands
# --------------------------------------------------------------------------------------------

def configure(args: argparse.Namespace, output_dir: Path | None = None):
    """The runtime configuration, folders, model paths and node packs; returns the registry."""
    from loom.nodes.kernel import config, folders
    from loom.nodes.kernel.schema import default_registry

    try:
        cache_bytes = None if args.model_cache_bytes is None else config.parse_bytes(args.model_cache_bytes)
        config.configure(config.from_environment(device=args.device, force_fp32=args.force_fp32,
                                                 model_cache_bytes=cache_bytes, allow_pickle=args.allow_pickle,
                                                 fast=args.fast))
    except ValueError as problem:
        raise UsageError(str(problem)) from None

    data_dirs = {"output": output_dir} if output_dir else None
    folders.configure(args.base_dir, args.models_dir, data_dirs=data_dirs)
    for yaml_path in args.extra_model_paths:
        folders.load_extra_model_paths(yaml_path)
    for pack in args.nodes:
        if not pack.exists():
            raise UsageError(f"node pack {pack} does not exist")
    try:
        return default_registry(args.nodes)
    except Exception as problem:
        raise UsageError(f"could not load node packs: {problem}") from problem


def load_prompt(path: Path, registry) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The API prompt of a workflow file, and its UI form when it has one."""
    from loom.server import workflow

    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        loaded = workflow.load_workflow_file(path)
        prompt = workflow.to_api(loaded, registry)
    except workflow.WorkflowError as problem:
        problems = getattr(problem, "problems", None) or []
        # the message lists the problems too: say them once, one line each
        message = "the workflow cannot be converted" if problems else str(problem)
        if not message.startswith(f"{path}:"):  # most load errors name the file already
            message = f"{path}: {message}"
        lines = [message]
        for item in problems:
            lines.append(f"node {item.get('node_id')} ({item.get('class_type')}): {item.get('message')}")
        raise InvalidWorkflow(lines) from problem
    return prompt, loaded.ui


class InvalidWorkflow(Exception):
    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def print_invalid(lines: list[str]) -> int:
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    return EXIT_INVALID


def skipped_outputs(validation: "ValidationResult") -> dict[str, list[str]]:
    """The outputs a valid-in-part prompt would skip, each with the nodes whose errors stop it."""
    causes: dict[str, list[str]] = {}
    for node_id, entry in validation.node_errors.items():
        for output in entry.get("dependent_outputs") or []:
            causes.setdefault(output, []).append(node_id)
    return dict(sorted(causes.items(), key=lambda item: (len(item[0]), item[0])))


def skipped_output_lines(prompt: dict[str, Any], validation: "ValidationResult") -> list[str]:
    """Each validation problem (node, input, what is wrong), then each output it stops and why."""
    def name(node_id: str) -> str:
        return f"node {node_id} ({prompt.get(node_id, {}).get('class_type', '?')})"

    lines = validation.messages()
    for output, causes in skipped_outputs(validation).items():
        because = ", ".join(name(n) for n in causes if n != output)
        lines.append(f"output {name(output)} cannot run" + (f": it needs {because}" if because else ""))
    return lines


# --------------------------------------------------------------------------------------------
# overrides
# --------------------------------------------------------------------------------------------

def find_node(prompt: dict[str, Any], ref: str) -> str:
    """A node id from an id, a unique title, or a unique class type."""
    if ref in prompt:
        return ref
    for field in ("title", "class_type"):
        matches = [nid for nid, node in prompt.items()
                   if (node.get("_meta", {}).get("title") if field == "title" else node.get("class_type")) == ref]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"--set: {ref!r} matches nodes {', '.join(sorted(matches))}; use a node id")
    raise UsageError(f"--set: no node with id, title or type {ref!r}")


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(prompt: dict[str, Any], overrides: list[str], registry) -> None:
    for item in overrides:
        target, sep, value = item.partition("=")
        node_ref, dot, input_name = target.rpartition(".")
        if not sep or not dot or not node_ref or not input_name:
            raise UsageError(f"--set {item!r}: expected NODE.INPUT=VALUE")
        node_id = find_node(prompt, node_ref)
        node = prompt[node_id]
        node_class = registry.get(node["class_type"])
        spec = node_class.schema().input(input_name) if node_class else None
        if node_class is not None and spec is None:
            names = ", ".join(s.name for s in node_class.schema().inputs)
            raise UsageError(f"--set {item!r}: node {node_id} ({node['class_type']}) has no input "
                             f"{input_name!r}; its inputs are: {names}")
        parsed = parse_value(value)
        if spec is not None and spec.type in ("STRING", "COMBO") and not isinstance(parsed, str):
            parsed = value  # a file name or text that happens to look like a number
        node.setdefault("inputs", {})[input_name] = parsed


def apply_seed(prompt: dict[str, Any], seed: int, registry) -> int:
    changed = 0
    for node in prompt.values():
        node_class = registry.get(node.get("class_type"))
        if node_class is None:
            continue
        for spec in node_class.schema().inputs:
            value = node.get("inputs", {}).get(spec.name)
            if spec.type == "INT" and spec.has_control_after_generate and not isinstance(value, list):
                node["inputs"][spec.name] = seed
                changed += 1
    return changed


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from loom.server import sweep

    if sweep.wanted(args):
        return sweep.cmd_sweep(args, load_prompt, configure, run_single, print_invalid)
    return run_single(args)


def run_single(args: argparse.Namespace) -> int:
    """One workflow, run once (``loom run`` without sweep options)."""
    from loom.server.validation import validate_prompt

    registry = configure(args, output_dir=args.output_dir)
    try:
        prompt, ui = load_prompt(args.workflow[0], registry)
    except InvalidWorkflow as invalid:
        return print_invalid(invalid.lines)
    apply_overrides(prompt, args.overrides, registry)
    seed = None
    if args.seed is not None:
        try:
            seed = int(args.seed)
        except ValueError:
            raise UsageError(f"--seed {args.seed!r}: expected a seed, or a range or list like 1-8 or 1,5,9") from None
    if seed is not None and apply_seed(prompt, seed, registry) == 0:
        print("warning: --seed given but the workflow has no seed input", file=sys.stderr)
    validation = validate_prompt(prompt, registry)
    if not validation.ok:
        return print_invalid(validation.messages())
    if validation.node_errors:
        invalid = len(skipped_outputs(validation))
        total = len(validation.outputs) + invalid
        return print_invalid(skipped_output_lines(prompt, validation)
                             + [f"nothing was run: {invalid} of {total} outputs cannot run"])

    from loom.server.executor import Executor
    from loom.server.progress_view import ProgressView

    view = ProgressView(prompt, validation.order, stream=sys.stderr, enabled=not args.quiet)
    executor = Executor(registry)
    extra_data = {"extra_pnginfo": {"workflow": ui}} if ui else {}
    try:
        result = executor.execute(prompt, uuid.uuid4().hex, extra_data=extra_data, on_event=view.on_event,
                                  validation=validation)
    except KeyboardInterrupt:
        executor.interrupt()
        raise
    view.close()
    if result.status == "error":
        error = result.error or {}
        print(f"error: node {error.get('node_id')} ({error.get('node_type')}): "
              f"{error.get('exception_message')}", file=sys.stderr)
        return EXIT_FAILED
    if result.status == "interrupted":
        print("interrupted", file=sys.stderr)
        return EXIT_FAILED
    print_outputs(result.outputs)
    return EXIT_OK


def print_outputs(outputs: dict[str, dict[str, Any]]) -> None:
    from loom.nodes.kernel import folders

    for node_id, ui in outputs.items():
        for image in (ui or {}).get("images", []):
            kind = image.get("type", "output")
            path = folders.current().data_dir(kind) / image.get("subfolder", "") / image["filename"]
            print(path)
        for text in (ui or {}).get("text", []):
            print(f"node {node_id}: {text}")
        for latent in (ui or {}).get("latents", []):
            print(folders.output_dir() / latent.get("subfolder", "") / latent["filename"])


def cmd_validate(args: argparse.Namespace) -> int:
    from loom.server.validation import validate_prompt

    registry = configure(args)
    try:
        prompt, _ = load_prompt(args.workflow, registry)
    except InvalidWorkflow as invalid:
        return print_invalid(invalid.lines)
    validation = validate_prompt(prompt, registry)
    if not validation.ok:
        return print_invalid(validation.messages())
    if validation.node_errors:
        return print_invalid(skipped_output_lines(prompt, validation))
    print(f"ok: {len(validation.order)} nodes to run for outputs {', '.join(validation.outputs)}")
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    registry = configure(args)
    try:
        prompt, _ = load_prompt(args.workflow, registry)
    except InvalidWorkflow as invalid:
        return print_invalid(invalid.lines)
    json.dump(prompt, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def cmd_nodes(args: argparse.Namespace) -> int:
    registry = configure(args)
    if args.name:
        node_class = registry.get(args.name)
        if node_class is None:
            close = [n for n in registry.names() if args.name.lower() in n.lower()]
            hint = f"; did you mean {', '.join(close[:5])}?" if close else ""
            raise UsageError(f"no node type {args.name!r}{hint}")
        if args.json:
            print(json.dumps(registry.object_info(args.name), indent=2))
        else:
            print(describe_node(node_class))
        return EXIT_OK
    if args.json:
        print(json.dumps(registry.object_info(), indent=2))
        return EXIT_OK
    width = max((len(n) for n in registry.names()), default=0)
    for name, node_class in registry.items():
        print(f"{name:<{width}}  {node_class.schema().category}")
    return EXIT_OK


def describe_node(node_class) -> str:
    schema = node_class.schema()
    lines = [f"{schema.name} ({schema.display_name or schema.name}) - {schema.category}"]
    if schema.description:
        lines.append(f"  {schema.description}")
    lines.append("inputs:")
    for spec in schema.inputs:
        options = {k: v for k, v in spec.options().items() if k != "tooltip"}
        kind = "COMBO" if spec.type == "COMBO" else spec.type
        extra = f" {json.dumps(options)}" if options else ""
        lines.append(f"  {spec.name}: {kind}{' (optional)' if spec.optional else ''}{extra}")
        if spec.type == "COMBO":
            choices = spec.choices()
            shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
            lines.append(f"      options: {shown or '(none)'}")
    lines.append("outputs:")
    for output in schema.outputs:
        lines.append(f"  {output.display_name}: {output.type}{' (list)' if output.is_list else ''}")
    if schema.output_node:
        lines.append("output node: yes")
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    registry = configure(args)
    from loom.server.serve import run_server

    return run_server(args, registry) or EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
