"""The `picovlm` command: a thin layer over the Python API (parse the arguments, call, print).

    picovlm data --preset tiny --out data/tiny
    picovlm train --preset tiny --data data/tiny --out runs/tiny
    picovlm eval --model runs/tiny/instruct/model --data data/tiny/test.json
    picovlm eval-data --from data/tiny --out data/tiny/eval
    picovlm eval --task vqav2 --model runs/tiny/instruct/model --data data/tiny/eval --limit 100
    picovlm score --task vqav2 --annotations A.json --questions Q.json --results R.json
    picovlm generate --model runs/tiny/instruct/model --image data/tiny/images/test_000000.png --prompt "..."
    picovlm chat --model runs/tiny/instruct/model
    picovlm serve --model runs/tiny/instruct/model --port 8000
    picovlm demo
    picovlm export --model runs/llava/instruct/model --format hf-llava out/llava  # a LLaVA projector: docs/interop.md
    picovlm export --model runs/demo/instruct/model --format hf-internvl out/internvl  # pixel shuffle
    picovlm import --format hf-llava out/llava runs/imported/model
    picovlm vq train --preset demo --data data/demo --out runs/vq            # the VQ image tokenizer
    picovlm vq eval --model runs/vq/vq/model --data data/demo/test.json      # PSNR and codebook use
    picovlm vq encode --model runs/vq/vq/model IMAGE... --out codes.jsonl
    picovlm vq decode --model runs/vq/vq/model codes.jsonl --out decoded/

Anything that goes wrong at run time is reported as one line, `picovlm: error: ...`, with exit code 1:
the messages of the library already say which file and what is wrong, a traceback adds nothing.
Ctrl-C is exit code 130; in `train`, after the stage has saved a checkpoint to resume from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
from PIL import Image

from picovlm.allocator import keep_freed_memory
from picovlm.config import RecipeConfig, from_dict
from picovlm.data.av import AVData, build_av_dataset
from picovlm.data.scenes import build_dataset
from picovlm.demo import run_demo
from picovlm.demo_av import run_av_demo
from picovlm.demo_native import run_native_demo
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.quantize import QUANTIZE_CHOICES
from picovlm.engine.sampling import SamplingParams
from picovlm.engine.session import DEFAULT_SAVE_DIR, ChatSession, Drawn
from picovlm.eval.benchmarks import scene_config_of, write_eval_sets
from picovlm.eval.clients import PipelineClient, placeholders
from picovlm.eval.drawing import dataset_test_split, judge_drawings, load_drawings
from picovlm.eval.drawing_judge import DrawingJudge, train_judge
from picovlm.eval.embedder import ClipEmbedder
from picovlm.eval.harness import BATCH_SIZE, markdown_table, run_eval, score_files
from picovlm.eval.reconstruction import run_reconstruction
from picovlm.eval.tasks import GENERATION_TASKS, TASK_NAMES
from picovlm.models.modalities import MODALITIES
from picovlm.presets import DATA_PRESETS, PRESETS, RECIPES, VQ_RECIPES
from picovlm.serve.config import ServeConfig
from picovlm.serve.protocol import Limits
from picovlm.train.distributed import shutdown
from picovlm.train.loop import Interrupted
from picovlm.train.stages import run_recipe
from picovlm.vision.image import load_image
from picovlm.vq.codes import png_names, read_codes, write_codes
from picovlm.vq.tokenizer import ImageTokenizer

MB = 1024 * 1024


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# ---------------------------------------------------------------------------- data, train, eval


def cmd_data(args: argparse.Namespace) -> int:
    preset = DATA_PRESETS[args.preset]()
    overrides = {k: v for k in ("n_train", "n_val", "n_test", "seed") if (v := getattr(args, k)) is not None}
    preset = dataclasses.replace(preset, **overrides)
    if isinstance(preset, AVData):
        paths, what = build_av_dataset(args.out, preset), "clips and sounds"
    else:
        paths = build_dataset(args.out, preset.scenes, preset.n_train, preset.n_val, preset.n_test, preset.seed)
        what = "images"
    print(f"wrote {preset.n_train} train / {preset.n_val} val / {preset.n_test} test {what} to {args.out}:")
    for path in paths.values():
        print(f"  {path}")
    return 0


def load_recipe(path: Path) -> RecipeConfig:
    """A RecipeConfig from a JSON file (e.g. one written by `train --dump-config`). A relative
    `data_dir` or `image_root` in it is relative to the file, so a recipe can sit beside its data."""
    try:
        d = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object with RecipeConfig fields")
    try:
        recipe = from_dict(RecipeConfig, d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    for name in ("data_dir", "image_root"):
        value = getattr(recipe, name)
        if value and not Path(value).is_absolute():
            setattr(recipe, name, str(Path(path).parent / value))
    return recipe


def _train_recipe(args: argparse.Namespace) -> RecipeConfig:
    """The recipe that `train` runs: a preset or a file, with what the flags change in it."""
    if args.config:
        recipe = load_recipe(args.config)
        if args.data:
            recipe.data_dir = str(args.data)
    else:
        recipe = args.recipes[args.preset](str(args.data or f"data/{args.preset}"))
    if args.images:
        recipe.image_root = str(args.images)
    if args.skip_bad_files:
        recipe.stages = [dataclasses.replace(s, on_bad_file="skip") for s in recipe.stages]
    return recipe


def cmd_train(args: argparse.Namespace) -> int:
    recipe = _train_recipe(args)
    if args.dump_config:
        print(json.dumps(dataclasses.asdict(recipe), indent=2))
        return 0
    if args.out is None:
        raise ValueError("train needs --out (the run folder)")
    data = Path(recipe.data_dir)
    if data.is_file():
        raise ValueError(f"{data}: --data takes the folder that holds the data files, not a file (here: {data.parent})")
    names = [s.name for s in recipe.stages]
    only = args.stages.split(",") if args.stages else None
    unknown = [s for s in only or [] if s not in names]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; the recipe has {', '.join(names)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        done = run_recipe(recipe, args.out, only=only, resume=args.resume, rejects=args.rejects)
    finally:
        shutdown()  # under torchrun: leave the process group
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone says it
        for name, path in done.items():
            print(f"{name}: {path}")
    return 0


def _load(args: argparse.Namespace) -> Pipeline:
    """The checkpoint of --model, with --quantize and --compile applied."""
    return Pipeline.load(args.model, quantize=args.quantize, compile_decode=args.compile)


def cmd_eval(args: argparse.Namespace) -> int:
    if args.data is None:
        what = "a LLaVA-style test file" if args.task == "vqa" else "a folder made by `picovlm eval-data`, or its files"
        raise ValueError(f"--task {args.task} needs --data ({what})")
    out = args.out or Path("eval") / f"{args.task}.json"
    # only the options given: a task refuses one it does not have (--circular means nothing to vqav2)
    given = {"circular": args.circular or None, "prompt_suffix": args.prompt_suffix}
    options = {k: v for k, v in given.items() if v is not None}
    if (args.quantize or args.compile) and args.model is None:
        raise ValueError("--quantize and --compile apply to --model (a local checkpoint), not to --endpoint")
    loaded = args.quantize or args.compile
    client = PipelineClient(_load(args)) if loaded else None
    results = run_eval(
        args.task,
        args.data,
        out,
        model=args.model,
        client=client,
        endpoint=args.endpoint,
        endpoint_model=args.endpoint_model,
        images=args.images,
        limit=args.limit,
        batch_size=args.batch_size,
        **options,
    )
    _print_results(results)
    return 0


def _print_results(results: dict) -> None:
    """An evaluation's metrics as a table, its notes and files, and last the metrics as one JSON line."""
    print(markdown_table(results["task"], results["metrics"]), end="")
    for note in results["notes"]:
        print(f"note: {note}")
    for name, path in results["files"].items():
        print(f"{name}: {path}")
    print(json.dumps(results["metrics"]))


def cmd_score(args: argparse.Namespace) -> int:
    metrics = score_files(args.task, args.annotations, args.results, args.questions)
    for note in metrics.get("notes", []):
        print(f"note: {note}")
    print(json.dumps(metrics))
    return 0


def cmd_eval_data(args: argparse.Namespace) -> int:
    cfg = scene_config_of(args.source) if args.source else DATA_PRESETS[args.preset]().scenes
    paths = write_eval_sets(args.out, cfg, args.n, args.seed)
    print(f"wrote evaluation sets for {args.n} scenes to {args.out}:")
    for path in paths.values():
        print(f"  {path}")
    return 0


# ---------------------------------------------------------------------------- generate, chat


def _sampling(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    )


def _stream(
    pipe: Pipeline,
    messages: list[dict[str, str]],
    images: list[Image.Image],
    params: SamplingParams,
    media: dict[str, list] | None = None,
) -> str:
    """Print the answer as it is decoded; return it whole."""
    pieces = []
    for piece in pipe.stream(messages, images, params, media):
        print(piece, end="", flush=True)
        pieces.append(piece)
    print()
    return "".join(pieces)


def cmd_generate(args: argparse.Namespace) -> int:
    params = _sampling(args)  # first, so a bad value fails before the model loads
    images = [load_image(args.image)] if args.image else []
    media = {m: [MODALITIES[m].load(getattr(args, m))] for m in ("video", "audio") if getattr(args, m)}
    if not images and not media:
        raise ValueError("generate needs --image, --video or --audio")
    pipe = _load(args)
    _stream(pipe, [{"role": "user", "content": f"{placeholders(images, media)}\n{args.prompt}"}], images, params, media)
    return 0


def cmd_draw(args: argparse.Namespace) -> int:
    params = _sampling(args)
    pipe = _load(args)
    [image] = pipe.draw([args.prompt], params, guidance=args.guidance)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out} ({image.size[0]}x{image.size[1]})")
    return 0


CHAT_HELP = (
    "/image PATH adds an image to your next message (/video PATH a video, /audio PATH a sound file), "
    "/draw CAPTION draws an image (a native model), "
    "/save FILE.json writes the conversation (LLaVA format), /reset clears it, /quit exits"
)
ATTACH = {"/image": "image", "/video": "video", "/audio": "audio"}  # chat command -> modality


def cmd_chat(args: argparse.Namespace) -> int:
    """A multi-turn conversation: the whole history (messages and images) goes into every prompt."""
    params = _sampling(args)  # first, so a bad value fails before the model loads
    session = ChatSession(_load(args), params, args.save_dir)
    for modality in ATTACH.values():
        if getattr(args, modality):
            session.attach(getattr(args, modality), modality)
    print(f"picovlm chat ({CHAT_HELP})")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if line.partition(" ")[0] == "/quit":
            return 0
        if line:
            _chat_line(session, line, args.guidance)


def _drawn(drawn: Drawn) -> str:
    return f"[image drawn: {drawn.path}]"


def _chat_line(session: ChatSession, line: str, guidance: float = 0.0) -> None:
    """One line of the chat: a /command, or a message answered as it is decoded. A bad path, or a
    conversation that outgrew the context, is one error line and the chat goes on."""
    command, _, arg = line.partition(" ")
    arg, answering = arg.strip(), False
    try:
        if command == "/reset":
            session.reset()
            print("(conversation cleared)")
        elif command in ATTACH:
            n = session.attach(arg or "(no path given)", ATTACH[command])
            print(f"({ATTACH[command]} added to your next message; {n} in the conversation)")
        elif command == "/save":
            print(f"(saved to {session.save(arg or '(no file given)')})")
        elif command == "/draw":
            if not arg:
                raise ValueError("/draw needs a caption: /draw CAPTION")
            print(f"picovlm> {_drawn(session.draw(arg, guidance))}")
        elif command.startswith("/"):
            raise ValueError(f"unknown command {command}; {CHAT_HELP}")
        else:
            print("picovlm> ", end="", flush=True)
            answering = True
            for part in session.send(line):
                print(part if isinstance(part, str) else _drawn(part), end="", flush=True)
            print()
    except (ValueError, OSError) as e:
        lead, hint = ("\n", " (/reset starts over)") if answering else ("", "")
        print(f"{lead}picovlm: error: {e}{hint}", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from picovlm.serve.api import run_server
    except ImportError as e:
        raise ValueError(f"serving needs FastAPI and uvicorn: pip install 'picovlm[serve]' ({e})") from None
    limits = Limits(
        max_images=args.max_images,
        allow_image_urls=args.allow_image_urls,
        max_body_bytes=args.max_body_mb * MB,
    )
    cfg = ServeConfig(
        model_name=args.name,
        api_key=args.api_key or os.environ.get("PICOVLM_API_KEY") or None,
        max_batch=args.max_batch,
        host=args.host,
        port=args.port,
        limits=limits,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    run_server(args.model, cfg, quantize=args.quantize, compile_decode=args.compile)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    out, data = args.out or Path(f"runs/{args.preset}"), args.data or Path(f"data/{args.preset}")
    chosen = PRESETS[args.preset]
    if isinstance(chosen.data(), AVData):  # videos and sounds: scored per modality
        run_av_demo(out, data, args.preset, seed=args.seed)
    elif any(s.task == "native" for s in chosen.recipe(str(data)).stages):  # reads and draws: drawings judged
        run_native_demo(out, data, args.preset, seed=args.seed, compare=args.compare, clip=args.clip, judge=args.judge)
    else:
        run_demo(out, data, args.preset, seed=args.seed)
    return 0


# ---------------------------------------------------------------------------- judge: drawn images


def cmd_judge_train(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    judge = train_judge(scene_config_of(args.data), steps=args.steps, seed=args.seed)
    judge.save(args.out)
    images, scenes = dataset_test_split(args.data)
    print(f"saved the judge to {args.out}; on the {len(images)} real test images of {args.data}:")
    print(json.dumps(judge_drawings(images, scenes, judge)))
    return 0


def cmd_judge_score(args: argparse.Namespace) -> int:
    images, scenes = load_drawings(args.drawings)
    clip = ClipEmbedder.load(args.clip) if args.clip else None
    reference = dataset_test_split(args.reference)[0] if args.reference else None
    print(json.dumps(judge_drawings(images, scenes, DrawingJudge.load(args.judge), clip, reference)))
    return 0


# ---------------------------------------------------------------------------- vq: the image tokenizer


def cmd_vq_eval(args: argparse.Namespace) -> int:
    out = args.out or Path("eval") / "vq.json"
    _print_results(run_reconstruction(args.model, args.data, out, args.images, args.limit, args.batch_size))
    return 0


def cmd_vq_encode(args: argparse.Namespace) -> int:
    images = [load_image(path) for path in args.images]  # first, so a bad file fails before the model loads
    tokenizer = ImageTokenizer.load(args.model)
    ids = tokenizer.encode(images)
    names = [str(path) for path in args.images]
    if args.out is None:
        for name, row in zip(names, ids.tolist(), strict=True):
            print(json.dumps({"image": name, "grid": list(tokenizer.grid), "codes": row}))
        return 0
    write_codes(args.out, names, ids, tokenizer.grid)
    print(f"wrote the codes of {len(names)} images ({'x'.join(map(str, tokenizer.grid))} each) to {args.out}")
    return 0


def cmd_vq_decode(args: argparse.Namespace) -> int:
    tokenizer = ImageTokenizer.load(args.model)
    names, ids = read_codes(args.codes, tokenizer)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, image in zip(png_names(names), tokenizer.decode(ids), strict=True):
        image.save(args.out / name)
    print(f"wrote {len(names)} images to {args.out}")
    return 0


# ---------------------------------------------------------------------------- export, import

EXPORT_FORMATS = ("hf-llava", "hf-internvl", "hf-picovlm", "hf-clip")
IMPORT_FORMATS = ("hf-llava", "hf-internvl")


def cmd_export(args: argparse.Namespace) -> int:
    from picovlm.interop import clip, internvl, llava, picovlm_llava  # transformers loads only when needed

    exporters = {
        "hf-llava": llava.export_llava,
        "hf-internvl": internvl.export_internvl,
        "hf-picovlm": picovlm_llava.export_picovlm_llava,
        "hf-clip": clip.export_clip,
    }
    print(f"wrote {llava.describe(exporters[args.format](args.model, args.out))}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from picovlm.interop import internvl, llava

    importer = llava.import_llava if args.format == "hf-llava" else internvl.import_internvl
    print(f"wrote picovlm checkpoint {importer(args.src, args.out)}")
    return 0


# ---------------------------------------------------------------------------- parser


def _add_load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        help="int8: the LM's and projector's Linear layers in dynamic int8 (CPU only; bench/generate.py "
        "measures the speed-up, `picovlm eval --quantize int8` the accuracy cost)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="decode steps through torch.compile (picovlm's own GPT; the compile is paid at load, seconds to "
        "minutes; bench/generate.py --compile measures the speed-up)",
    )


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    defaults = SamplingParams()
    p.add_argument(
        "--max-tokens",
        metavar="N",
        type=int,
        default=defaults.max_tokens,
        help=f"most tokens to generate (default: {defaults.max_tokens})",
    )
    p.add_argument("--temperature", metavar="T", type=float, default=defaults.temperature, help="0 = greedy (default)")
    p.add_argument(
        "--top-k", metavar="K", type=int, default=defaults.top_k, help="sample among the k likeliest tokens; 0 = off"
    )
    p.add_argument(
        "--top-p",
        metavar="P",
        type=float,
        default=defaults.top_p,
        help="sample among the likeliest tokens covering this probability, in (0, 1]; 1 = off",
    )
    p.add_argument("--seed", metavar="N", type=int, help="seed for sampling, for repeatable answers")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="picovlm", description="Build, train, evaluate and chat with small VLMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(sub)
    return parser


Subparsers = argparse._SubParsersAction  # what `add_subparsers` returns


def _data_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "data",
        help="generate a shapes dataset",
        description="Generate a procedural shapes "
        "dataset: images, LLaVA-style question files and caption files for train/val/test.",
    )
    p.add_argument("--preset", choices=sorted(DATA_PRESETS), default="demo", help="dataset preset (default: demo)")
    p.add_argument("--out", metavar="DIR", type=Path, required=True, help="folder to write the dataset into")
    for split in ("train", "val", "test"):
        p.add_argument(
            f"--n-{split}", metavar="N", type=_positive_int, help=f"number of {split} images (default: the preset's)"
        )
    p.add_argument("--seed", metavar="N", type=int, help="random seed (default: the preset's)")
    p.set_defaults(run=cmd_data)


def _train_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "train",
        help="train a recipe's stages",
        description="Train the stages of a recipe in order; each stage writes a checkpoint to OUT/<stage>/model.",
    )
    _add_train_args(p, RECIPES)
    p.add_argument(
        "--stages", metavar="NAMES", help="comma-separated stages to run, e.g. align,instruct (default: all)"
    )


def _add_train_args(p: argparse.ArgumentParser, recipes: dict) -> None:
    """The arguments of `train` and `vq train`, which differ only in their presets (`recipes`)."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=sorted(recipes), help="a built-in recipe")
    source.add_argument(
        "--config", metavar="FILE", type=Path, help="a recipe JSON file (start from the output of --dump-config)"
    )
    p.add_argument(
        "--data", metavar="DIR", type=Path, help="dataset folder (default: data/PRESET, or the data_dir of --config)"
    )
    p.add_argument(
        "--images",
        metavar="DIR",
        type=Path,
        help="where relative image names in the data files are looked up (default: beside each data file)",
    )
    p.add_argument("--out", metavar="DIR", type=Path, help="run folder for checkpoints and logs")
    p.add_argument("--resume", action="store_true", help="continue stages from their last checkpoint")
    p.add_argument(
        "--rejects",
        metavar="FILE",
        type=Path,
        help="write the records left out (bad, unreadable image, too long) to FILE as JSON lines: "
        "source, reason, error and the record",
    )
    p.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="train on the records before the damage of a data file that cannot be read to its end "
        '(on_bad_file "skip" in every stage; default: such a file stops the run)',
    )
    p.add_argument("--threads", metavar="N", type=_positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--dump-config", action="store_true", help="print the recipe as JSON and exit")
    p.set_defaults(run=cmd_train, recipes=recipes, stages=None)


def _eval_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "eval",
        help="score a model on VQA data or a benchmark task",
        description="Score a task: by default (vqa) short-answer VQA accuracy of a LLaVA-style test file (exact "
        "match after normalization, per question type), or a benchmark in its own format "
        f"({', '.join(t for t in TASK_NAMES if t != 'vqa')}). "
        "Writes the results JSON, a markdown table, every prediction (.predictions.jsonl) and the official result "
        "file.",
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--model",
        metavar="DIR",
        type=Path,
        help="checkpoint folder, e.g. runs/demo/instruct/model (clip/model for retrieval and zeroshot)",
    )
    who.add_argument(
        "--endpoint",
        metavar="URL",
        help="an OpenAI-compatible server: POST URL/v1/chat/completions (instead of --model)",
    )
    p.add_argument("--task", choices=TASK_NAMES, default="vqa", help="what to score (default: vqa)")
    p.add_argument(
        "--data",
        metavar="PATH",
        type=Path,
        help="vqa: a LLaVA-style test file (.json, .jsonl, ...); a benchmark: a folder made by "
        "`picovlm eval-data` or the benchmark's own file(s)",
    )
    p.add_argument("--images", metavar="DIR", type=Path, help="where the images are (default: beside --data)")
    p.add_argument("--limit", metavar="N", type=_positive_int, help="score only the first N questions")
    p.add_argument(
        "--batch-size",
        metavar="N",
        type=_positive_int,
        default=BATCH_SIZE,
        help=f"questions decoded together (default: {BATCH_SIZE})",
    )
    _add_eval_output_args(p)
    _add_load_args(p)
    p.set_defaults(run=cmd_eval)


def _add_eval_output_args(p: argparse.ArgumentParser) -> None:
    """Where eval writes, and the options of single benchmarks."""
    p.add_argument(
        "--out",
        metavar="FILE",
        type=Path,
        help="the results JSON (default: eval/TASK.json); the markdown table, predictions and official "
        "result file go beside it",
    )
    p.add_argument("--circular", action="store_true", help="mmstar: MMBench circular evaluation (all rotations right)")
    p.add_argument(
        "--prompt-suffix",
        metavar="TEXT",
        help="vqa/vqav2/gqa/pope: text after each question (default: none for vqa, else LLaVA's "
        "'Answer the question using a single word or phrase.'; '' for none)",
    )
    p.add_argument("--endpoint-model", metavar="NAME", default="default", help="the model name sent to --endpoint")


def _score_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "score",
        help="score an official-format result file (no model)",
        description="Score a result file in the benchmark's official format (VQAv2 [{question_id, answer}], COCO "
        "[{image_id, caption}], GQA [{questionId, prediction}], POPE [{question_id, text}], multiple choice "
        "[{index, prediction}]) against its annotations; the last line is the metrics as JSON.",
    )
    p.add_argument("--task", choices=sorted(GENERATION_TASKS), required=True, help="the benchmark")
    p.add_argument(
        "--annotations",
        metavar="FILE",
        type=Path,
        required=True,
        help="VQAv2 annotations, COCO captions, GQA questions, POPE JSONL or MMStar TSV/JSONL",
    )
    p.add_argument("--questions", metavar="FILE", type=Path, help="vqav2: the questions file (checks the result ids)")
    p.add_argument("--results", metavar="FILE", type=Path, required=True, help="the result file to score")
    p.set_defaults(run=cmd_score)


def _eval_data_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "eval-data",
        help="write small benchmark-format eval sets",
        description="Write evaluation sets in the benchmarks' formats (VQAv2, GQA, COCO captions, POPE, MMStar TSV, "
        "ImageFolder) from new scenes drawn like those of a dataset, so every eval task runs offline.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--from", dest="source", metavar="DIR", type=Path, help="dataset folder whose scene config to use")
    src.add_argument("--preset", choices=sorted(DATA_PRESETS), default="demo", help="data preset (default: demo)")
    p.add_argument("--out", metavar="DIR", type=Path, required=True, help="folder to write the sets into")
    p.add_argument("--n", metavar="N", type=_positive_int, default=200, help="number of scenes (default: 200)")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(run=cmd_eval_data)


def _generate_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "generate",
        help="answer one prompt about an image (a video, a sound)",
        description="Answer one prompt about one image (and/or one video, one sound), streaming the answer to stdout.",
    )
    p.add_argument("--model", metavar="DIR", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--image", metavar="FILE", type=Path, help="image file")
    p.add_argument("--video", metavar="FILE", type=Path, help="video file (.mp4, .webm), for a model that reads videos")
    p.add_argument("--audio", metavar="FILE", type=Path, help="sound file (.wav, .flac), for a model that reads audio")
    p.add_argument("--prompt", metavar="TEXT", required=True, help="the question or instruction")
    _add_sampling_args(p)
    _add_load_args(p)
    p.set_defaults(run=cmd_generate)


def _draw_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "draw",
        help="draw an image from a caption (a native model)",
        description="Draw one image from a caption with a native model's checkpoint; writes a PNG.",
    )
    p.add_argument("prompt", help='what to draw, e.g. "a red circle above a blue square"')
    p.add_argument("--model", metavar="DIR", type=Path, required=True, help="a native model's checkpoint folder")
    p.add_argument("-o", "--out", metavar="FILE", type=Path, default=Path("out.png"), help="PNG to write")
    p.add_argument("--guidance", metavar="S", type=float, default=0.0, help="classifier-free guidance (0 = off)")
    _add_sampling_args(p)
    _add_load_args(p)
    p.set_defaults(run=cmd_draw)


def _chat_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "chat",
        help="multi-turn chat in the terminal",
        description=f"Multi-turn chat in the terminal. Commands: {CHAT_HELP}.",
    )
    p.add_argument("--model", metavar="DIR", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--image", metavar="FILE", type=Path, help="an image for the first message")
    p.add_argument("--video", metavar="FILE", type=Path, help="a video (.mp4, .webm) for the first message")
    p.add_argument("--audio", metavar="FILE", type=Path, help="a sound file (.wav, .flac) for the first message")
    p.add_argument(
        "--save-dir",
        metavar="DIR",
        type=Path,
        default=DEFAULT_SAVE_DIR,
        help=f"where the images a native model draws are saved (default: {DEFAULT_SAVE_DIR})",
    )
    p.add_argument("--guidance", metavar="S", type=float, default=0.0, help="classifier-free guidance of /draw")
    _add_sampling_args(p)
    _add_load_args(p)
    p.set_defaults(run=cmd_chat)


def _serve_parser(sub: Subparsers) -> None:
    cfg, limits = ServeConfig(), Limits()  # the defaults
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible server and web chat page",
        description="Serve a model over HTTP: POST /v1/chat/completions (OpenAI format, streaming), "
        "GET /v1/models, GET /health, and a chat page at /. Concurrent requests are decoded in one batch.",
    )
    p.add_argument("--model", metavar="DIR", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--host", default=cfg.host, help=f"address to listen on (default: {cfg.host}, this machine only)")
    p.add_argument("--port", type=int, default=cfg.port, help=f"port (default: {cfg.port})")
    p.add_argument("--name", default=cfg.model_name, help=f"the model name clients send (default: {cfg.model_name})")
    p.add_argument(
        "--api-key", metavar="KEY", help="require Authorization: Bearer KEY (default: $PICOVLM_API_KEY, else no auth)"
    )
    p.add_argument(
        "--max-batch", metavar="N", type=_positive_int, default=cfg.max_batch, help="most requests decoded together"
    )
    p.add_argument(
        "--max-images", metavar="N", type=_positive_int, default=limits.max_images, help="most images per request"
    )
    p.add_argument(
        "--max-body-mb",
        metavar="MB",
        type=_positive_int,
        default=limits.max_body_bytes // MB,
        help="largest request body",
    )
    p.add_argument("--allow-image-urls", action="store_true", help="fetch http(s) image URLs (default: data URLs only)")
    p.add_argument(
        "--threads",
        metavar="N",
        type=_positive_int,
        help="torch CPU threads (default: torch's choice; 1 is often fastest for small models on a busy CPU)",
    )
    _add_load_args(p)
    p.set_defaults(run=cmd_serve)


def _demo_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "demo",
        help="data, training, evaluation and a sample chat in one go",
        description="Build the data, train every stage from scratch, evaluate and show a "
        "sample chat; the last line of output is a JSON summary.",
    )
    p.add_argument("--out", metavar="DIR", type=Path, help="run folder (default: runs/PRESET)")
    p.add_argument(
        "--data",
        metavar="DIR",
        type=Path,
        help="dataset folder, reused when it holds the preset's data (default: data/PRESET)",
    )
    p.add_argument("--preset", choices=sorted(RECIPES), default="demo", help="data and recipe preset (default: demo)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, help="every stage's seed (default: the recipe's own, 0)")
    native = "native presets: "
    p.add_argument(
        "--compare", metavar="FILE", type=Path, default=Path("runs/demo/eval.json"),
        help=native + "the adapter demo's eval.json, shown beside (default: runs/demo/eval.json)",
    )  # fmt: skip
    p.add_argument(
        "--clip", metavar="DIR", type=Path, default=Path("runs/demo/clip/model"),
        help=native + "a CLIP checkpoint for the drawings' CLIP score and FID (default: runs/demo/clip/model)",
    )  # fmt: skip
    p.add_argument("--judge", metavar="DIR", type=Path, help=native + "a drawing judge (default: train one)")
    p.set_defaults(run=cmd_demo)


def _vq_parser(sub: Subparsers) -> None:
    vq = sub.add_parser(
        "vq",
        help="the VQ image tokenizer: train, evaluate, encode, decode",
        description="The VQ image tokenizer of native models: a VQ-VAE that turns an image into a grid of code "
        "ids and back (picovlm/vq/).",
    )
    commands = vq.add_subparsers(dest="vq_command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "train",
        help="train the tokenizer",
        description="Train a recipe of one `vq` stage (e.g. --preset demo on data/demo); the tokenizer is "
        "OUT/vq/model. The same loop, checkpoints, logs and --resume as `picovlm train`.",
    )
    _add_train_args(p, VQ_RECIPES)
    for add in (_vq_eval_parser, _vq_encode_parser, _vq_decode_parser):
        add(commands)


def _judge_parser(sub: Subparsers) -> None:
    judge = sub.add_parser(
        "judge",
        help="judge drawn images: per-attribute accuracy, CLIP score, FID in CLIP space",
        description="A small CNN that reads a scene image back into shapes and colours per grid cell "
        "(picovlm/eval/drawing_judge.py), to check drawn images against their prompts (picovlm/eval/drawing.py).",
    )
    commands = judge.add_subparsers(dest="judge_command", required=True, metavar="COMMAND")
    p = commands.add_parser("train", help="train the judge on a built-in dataset's scenes; report it on its test split")
    p.add_argument("--data", metavar="DIR", type=Path, required=True, help="a dataset made by `picovlm data`")
    p.add_argument("--out", metavar="DIR", type=Path, required=True, help="where the judge is saved")
    p.add_argument("--steps", metavar="N", type=_positive_int, default=600, help="training steps (default 600)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(run=cmd_judge_train)
    p = commands.add_parser("score", help="score drawn images against their prompts")
    p.add_argument("--judge", metavar="DIR", type=Path, required=True, help="a judge from `picovlm judge train`")
    p.add_argument(
        "--drawings", metavar="FILE", type=Path, required=True,
        help='a JSON list of {"image": PNG path relative to FILE, "prompt": text or "objects": [...]}',
    )  # fmt: skip
    p.add_argument("--clip", metavar="DIR", type=Path, help="a CLIP checkpoint: adds clip_score (and fid_clip)")
    p.add_argument("--reference", metavar="DIR", type=Path, help="a dataset whose real test images fid_clip compares")
    p.set_defaults(run=cmd_judge_score)


def _vq_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", type=Path, required=True, help="a vq checkpoint, e.g. runs/vq/vq/model")


def _vq_eval_parser(commands: Subparsers) -> None:
    p = commands.add_parser(
        "eval",
        help="reconstruction PSNR/MSE and codebook use on a dataset's images",
        description="Encode and decode every image of a dataset file; report MSE, PSNR and codebook use (share of "
        "codes used, perplexity). Writes the results JSON, a markdown table, one line per image "
        "(.predictions.jsonl) and .samples.png (originals above their reconstructions).",
    )
    _vq_model_arg(p)
    p.add_argument("--data", metavar="FILE", type=Path, required=True, help="a dataset file, e.g. data/demo/test.json")
    p.add_argument("--images", metavar="DIR", type=Path, help="where the images are (default: beside --data)")
    p.add_argument("--limit", metavar="N", type=_positive_int, help="only the first N images")
    p.add_argument("--batch-size", metavar="N", type=_positive_int, default=BATCH_SIZE, help="images per batch")
    p.add_argument("--out", metavar="FILE", type=Path, help="the results JSON (default: eval/vq.json)")
    p.set_defaults(run=cmd_vq_eval)


def _vq_encode_parser(commands: Subparsers) -> None:
    p = commands.add_parser(
        "encode",
        help="images -> code ids (JSON lines)",
        description="Encode images (resized to the tokenizer's size) into code ids: one JSON line per image, "
        '{"image", "grid", "codes"}, the codes row by row.',
    )
    _vq_model_arg(p)
    p.add_argument("images", metavar="IMAGE", type=Path, nargs="+", help="image files")
    p.add_argument("--out", metavar="FILE", type=Path, help="the codes file to write (default: print the lines)")
    p.set_defaults(run=cmd_vq_encode)


def _vq_decode_parser(commands: Subparsers) -> None:
    p = commands.add_parser(
        "decode",
        help="code ids (JSON lines) -> PNG images",
        description="Decode a codes file written by `picovlm vq encode` (or by a model) into one PNG per line.",
    )
    _vq_model_arg(p)
    p.add_argument("codes", metavar="CODES", type=Path, help="the codes file (JSON lines)")
    p.add_argument("--out", metavar="DIR", type=Path, required=True, help="folder to write the PNGs into")
    p.set_defaults(run=cmd_vq_decode)


def _export_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "export",
        help="write a model as an HF folder",
        description="hf-llava: a VLM checkpoint as an HF LlavaForConditionalGeneration folder (weights, "
        "config, tokenizer, chat template, processor); needs a ViT tower in the CLIP layout and a "
        "linear/mlp2x_gelu/identity projector; any GPT maps (Llama, or Qwen3 with qk_norm). "
        "hf-internvl: the same as an HF InternVLForConditionalGeneration folder; needs a pixel_shuffleR "
        "projector, a ViT with stem 'patch', use_cls and pre_norm false, and image_markers. "
        "hf-picovlm: LLaVA with our stem and projector as code in the folder (transformers loads it with "
        "trust_remote_code=True): the demo's model; stems patch/hybrid, projectors as hf-llava's or "
        "pixel_shuffleR, each with or without +pos. "
        "hf-clip: a clip-stage checkpoint as an HF CLIPModel folder (needs clip.text_layout 'clip').",
    )
    p.add_argument("--model", metavar="DIR", type=Path, required=True, help="picovlm checkpoint folder")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="hf-llava", help="output format (default: hf-llava)")
    p.add_argument("out", metavar="OUT", type=Path, help="folder to write")
    p.set_defaults(run=cmd_export)


def _import_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "import",
        help="read an HF folder into a picovlm checkpoint",
        description="Read an HF LLaVA or InternVL folder (e.g. one written by `picovlm export`) into a picovlm "
        "checkpoint.",
    )
    p.add_argument("--format", choices=IMPORT_FORMATS, default="hf-llava", help="input format (default: hf-llava)")
    p.add_argument("src", metavar="SRC", type=Path, help="HF folder to read")
    p.add_argument("out", metavar="OUT", type=Path, help="checkpoint folder to write")
    p.set_defaults(run=cmd_import)


COMMANDS = (  # in the order `picovlm --help` lists them
    _data_parser,
    _train_parser,
    _eval_parser,
    _score_parser,
    _eval_data_parser,
    _generate_parser,
    _chat_parser,
    _draw_parser,
    _serve_parser,
    _demo_parser,
    _vq_parser,
    _judge_parser,
    _export_parser,
    _import_parser,
)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): argparse has printed what to say
        return int(e.code or 0)
    keep_freed_memory()  # CPU steps stop page-faulting their activations in (allocator.py)
    try:
        return args.run(args)
    except (ValueError, KeyError, OSError) as e:  # incl. DataError, ImageError, FileNotFoundError
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"picovlm: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 1
    except Interrupted as e:  # Ctrl-C in training: the stage saved its checkpoint first
        resume = "; `picovlm train --resume` goes on from there" if args.command == "train" else ""
        print(f"\npicovlm: interrupted: {e}{resume}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\npicovlm: interrupted", file=sys.stderr)
        return 130
