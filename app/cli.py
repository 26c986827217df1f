"""Command line: `python -m app.cli index|search|info|list|remove|compact ... --index DIR` (the embedded
index) or `--store SPEC` (Qdrant: qdrant://HOST:PORT/COLLECTION or qdrant-local:DIR), and
`python -m app.cli eval DIR` (retrieval quality on a folder with judged queries; see app.evaluation).

The checkpoint that made an index is recorded in it: later commands load that one unless
`--checkpoint` says otherwise (and a different one is refused rather than mixed in).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model import MetaEmbed, checkpoint
from model.checkpoint import checkpoint_id_of_folder

from .evaluation import (
    QUERIES_NAME,
    EvalInputError,
    compare_reports,
    comparison_markdown,
    evaluate,
    load_queries,
    markdown,
    per_query_ranks,
    record_quality,
    recorded_quality,
)
from .humanize import SCORE_SCALE, files_of, one_line, plural
from .indexing import index_paths
from .ingest import default_ocr, load_image
from .search import ONLY, Searcher
from .store import open_store, open_store_for
from .store.index import REBUILD_HINT

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
NAMED_COPIES = 20  # copies of another file named one per line by `index`; the rest are counted
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


class CliError(Exception):
    """A failure to report in one line, without a traceback."""


class UsageError(CliError):
    """Bad input from the user (exit code 2)."""


# ------------------------------------------------------------------------------------------- checkpoints


def resolve_checkpoint(arg: str | None, where: str | None) -> tuple[Path, str, str]:
    """(checkpoint folder, source to record in the store, checkpoint id) for a command on store `where`.

    No --checkpoint: the one recorded in an existing store (none: `where` None), else the bundled
    MetaEmbed-Mini.
    """
    source: str | None = arg
    if arg is None and where is not None:
        try:
            with open_store(where) as index:
                source = index.checkpoint_source
        except FileNotFoundError:
            pass  # a new store
    folder = checkpoint.resolve(source)
    if source is None:
        recorded = ""  # the bundled default: found again wherever the package is installed
    elif Path(source).expanduser().exists():
        recorded = str(Path(source).expanduser().resolve())
    else:
        recorded = source  # a Hub id
    return folder, recorded, checkpoint_id_of_folder(folder)


def load_model(folder: Path) -> Any:
    quiet_library_progress()
    return MetaEmbed.from_pretrained(folder)


def quiet_library_progress() -> None:
    """Turn off transformers' own progress bars for the rest of this process.

    It draws a "Loading weights: 100%|...| 103/103" bar on stderr each time it loads a model (a VLM backbone),
    which is noise before every command's output, errors included. Only transformers' bars (and
    huggingface_hub's, which it switches with them) go: the CLI's own tqdm bar for indexing and eval is separate
    and stays. transformers reads the switch from the environment when it is first imported; it is imported
    here only if something already did (MetaEmbed-Mini loads without it, and the import costs 1-2 s).
    """
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


# ---------------------------------------------------------------------------------------------- commands


def cmd_index(args: argparse.Namespace) -> int:
    where = store_of(args)
    folder, source, ckpt_id = resolve_checkpoint(args.checkpoint, where)
    try:
        open_store(where, ckpt_id).close()  # refuse a mismatch before spending time on the model
    except FileNotFoundError:
        pass  # created below
    model = load_model(folder)
    start = time.perf_counter()
    with open_store_for(where, ckpt_id, model.config.num_candidate_tokens, model.dim, source) as index:
        bar = _progress_bar(args)
        saved: set[str] = set()  # files with something committed: counted as files, as the final message is

        def progress(done: float, total: int, name: str) -> None:
            if bar is not None:
                bar.total = total
                bar.n = int(done)  # whole files (a PDF's pages count as fractions of it)
                bar.set_postfix_str(f"{len(saved)} saved", refresh=False)
                bar.refresh()

        def on_commit(entries: list) -> None:
            saved.update(e.path for e in entries)
            if bar is not None:
                bar.set_postfix_str(f"{len(saved)} saved")

        try:
            run = index_paths(model, index, args.paths, batch_size=args.batch_size,
                              ocr=None if args.no_ocr else default_ocr, progress=progress, on_commit=on_commit)
        finally:
            if bar is not None:
                bar.close()
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps(run.to_json(), indent=2))
    else:
        # Files and pages, as the app counts them: a PDF page's passages are items too ("Indexed 191 items").
        # Skipped files, not their pages or passages (a PDF read again said "24 already indexed", its pages).
        skipped = len({path.split(" (page ")[0] for path in run.skipped_duplicates})
        print(f"Indexed {files_of(run.indexed)} in {seconds:.1f} s; {plural(skipped, 'file')} already indexed "
              f"or duplicate; {len(run.errors)} failed.")
        for source in run.replaced:
            print(f"  replaced the older version of {one_line(source)}")
        for old, new in run.moved:
            print(f"  moved: {one_line(old)} -> {one_line(new)}")
        # A copy of a file given in the same run is named (an already indexed file is only counted: re-indexing a
        # folder would list every file in it).
        copies = list(run.same_content_as.items())
        for path, earlier in copies[:NAMED_COPIES]:
            print(f"  skipped: {one_line(path)} (same content as {one_line(earlier)})")
        if len(copies) > NAMED_COPIES:  # a zip of 3,000 identical files printed 2,999 such lines
            print(f"  skipped: {plural(len(copies) - NAMED_COPIES, 'more copy', 'more copies')} of other files "
                  "(--json lists them all)")
        for note in run.notes:
            print(f"  note: {one_line(note.note)}")
        for error in run.errors:
            print(f"  failed: {one_line(error.error)}  [{one_line(error.path)}]")
    nothing_done = not run.indexed and not run.skipped_duplicates
    return EXIT_FAILED if nothing_done and run.errors else EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    where = store_of(args)
    budget = parse_budget(args.budget) if args.budget else None
    if args.k < 1:
        raise CliError(f"--k must be at least 1, got {args.k}")
    open_store(where).close()  # a missing index is the first thing to report
    folder, _source, ckpt_id = resolve_checkpoint(args.checkpoint, where)
    with open_store(where, ckpt_id) as index:
        model = load_model(folder)
        searcher = Searcher(model, index)
        budget = searcher.check_budget(budget)
        query: Any = args.query
        if args.image:
            query = _load_query_image(args.query)
        results = searcher.search(query, budget, k=args.k, only=args.only)
    if args.json:
        out = results.to_json()
        out["query"] = args.query
        print(json.dumps(out, indent=2))
    else:
        # The comparable score, as the app shows it: a raw MaxSim sum grows with r_q and reads differently at
        # every budget (--json has both).
        among = f" among the {args.only}" if args.only else ""
        print(f"{plural(len(results.hits), 'result')} for {args.query!r}{among} at budget {budget} (score: the mean best "
              f"similarity of the query's vectors; {SCORE_SCALE}):")
        if index.scored_budget(budget) != budget:
            print(f"  (scored at {index.scored_budget(budget)}: this store keeps the presets' r_c only)")
        for hit in results.hits:
            # A result is a whole page or text file (its best passage's score), so no passage number.
            print(f"{hit.rank:3d}. {hit.comparable:.3f}  {one_line(hit.path)}{_where(hit.page, None)}  [{hit.id}]")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    with open_store(store_of(args)) as index:
        info = index.info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        info["created"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["created"]))
        for key, value in info.items():
            print(f"{key}: {value}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    with open_store(store_of(args)) as index:
        items = index.items()
    rows = [{"id": it.id, "path": it.path, "page": it.page, "kind": it.kind, "passage": it.passage}
            for it in items]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['id']}  {row['kind']:8s} {one_line(row['path'])}{_where(row['page'], row['passage'])}")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    with open_store(store_of(args)) as index:
        try:
            removed = index.remove(args.targets)
        except KeyError as e:
            raise CliError(e.args[0]) from None
    if args.json:
        print(json.dumps({"removed": [it.id for it in removed]}, indent=2))
    else:
        print(f"Removed {files_of(removed)}.")
    return EXIT_OK


def cmd_compact(args: argparse.Namespace) -> int:
    with open_store(store_of(args)) as index:
        before = index.info()
        index.compact()
        after = index.info()
    if "segments" not in before:  # Qdrant compacts by itself
        print(f"Nothing to do: {before['location']} reclaims the space of removed items itself.")
        return EXIT_OK
    print(f"Compacted: {before['segments']} -> {after['segments']} segments, "
          f"{before['vector_bytes']} -> {after['vector_bytes']} bytes of vectors.")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    folder = Path(args.dir).expanduser()
    if any(k < 1 for k in args.k):
        raise UsageError(f"--k must be at least 1, got {' '.join(map(str, args.k))}")
    try:
        # Check the folder and queries.json before spending time on the model.
        if not folder.is_dir():
            raise EvalInputError(f"{folder}: no such folder" if not folder.exists() else f"{folder}: not a folder")
        queries = load_queries(folder / QUERIES_NAME)
        earlier = _earlier_report(args.against, [q.text for q in queries]) if args.against else None
        model_folder, source, ckpt_id = resolve_checkpoint(args.checkpoint, None)
        if args.record is not None:
            if not args.record.strip():
                raise UsageError("--record needs a split name, e.g. 'dev split (tests/data/devset)'")
            if source and not Path(source).exists():
                raise UsageError(f"--record writes into the checkpoint's folder: {source} is a Hub id, not a "
                                 "local checkpoint folder")
            recorded_quality(model_folder)  # a folder it cannot write or a damaged file: say so before the work
        model = load_model(model_folder)
        bar = None if args.json or args.quiet else _progress_bar(args)

        def progress(done: float, total: int, name: str) -> None:
            if bar is not None:
                bar.total, bar.n = total, int(done)
                bar.refresh()

        try:
            report = evaluate(model, ckpt_id, folder, recall_k=args.k, progress=progress)
        finally:
            if bar is not None:
                bar.close()
    except EvalInputError as e:
        raise UsageError(str(e)) from None
    for warning in report["warnings"]:
        print(f"warning: {warning['error']}  [{warning['path']}]", file=sys.stderr)
    if earlier is not None:
        try:
            report["against"] = {"report": str(Path(args.against).expanduser()),
                                 **compare_reports(earlier, report)}
        except EvalInputError as e:
            raise UsageError(f"{args.against}: {e}") from None
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    if earlier is not None and not args.json:
        print("\n" + comparison_markdown({k: v for k, v in report["against"].items() if k != "report"}))
    if args.record is not None:
        try:
            path = record_quality(model_folder, args.record.strip(), report)
        except EvalInputError as e:
            raise CliError(str(e)) from None
        except OSError as e:
            raise CliError(f"{model_folder}: cannot write {e.filename or 'quality.json'} ({e.strerror or e})") from None
        print(f"Recorded as {args.record.strip()!r} in {path} (the app's Model and Scaling tabs show it).",
              file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ helpers


def _earlier_report(path: str, queries: list[str]) -> dict:
    """The report --against names, read and checked before any work is done: a clear error for a missing or
    bad file, or for a report made on other queries than `queries` (this folder's queries.json)."""
    p = Path(path).expanduser()
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{p}: no such file (--against wants an earlier `eval --json` report)") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{p}: not a readable JSON report ({e})") from None
    try:
        pq = per_query_ranks(report)
    except EvalInputError as e:
        raise UsageError(f"{p}: {e}") from None
    if pq["queries"] != queries:
        raise UsageError(f"{p}: made on other queries than this folder's queries.json, so the two runs cannot "
                         "be paired query by query")
    return report


def store_of(args: argparse.Namespace) -> str:
    """The store a command works on: --index DIR or --store SPEC."""
    return args.store if args.store else str(Path(args.index).expanduser())


def _where(page: int | None, passage: int | None) -> str:
    parts = ([f"page {page}"] if page is not None else []) + ([f"passage {passage + 1}"] if passage is not None else [])
    return f" ({', '.join(parts)})" if parts else ""


def parse_budget(text: str) -> tuple[int, int]:
    parts = text.replace(" ", "").split(",")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise CliError(f"--budget must be two positive integers 'R_Q,R_C' (e.g. 16,64), got {text!r}")
    return int(parts[0]), int(parts[1])


def _load_query_image(path: str) -> Any:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as e:
        raise CliError(f"query image {path}: cannot be read ({e.strerror or e})") from None
    try:
        return load_image(data)
    except ValueError as e:
        raise CliError(f"query image {path}: {e}") from None


def _progress_bar(args: argparse.Namespace) -> Any:
    if args.json or args.quiet:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=0, unit="file", desc="indexing", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.cli", description="MetaEmbed Studio: index and search "
                                     "photos and documents with multi-vector embeddings.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--index", metavar="DIR", help="index folder (created by `index`)")
        where.add_argument("--store", metavar="SPEC", help="a Qdrant collection instead: qdrant://HOST:PORT/"
                           "COLLECTION (server or cluster; API key from $QDRANT_API_KEY) or qdrant-local:DIR")
        if json_flag:
            p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser("index", help="add files, folders or zip archives to an index")
    p.add_argument("paths", nargs="+", metavar="PATH")
    common(p)
    p.add_argument("--checkpoint", metavar="ID_OR_PATH",
                   help="checkpoint folder or Hub id (default: the index's, else the bundled MetaEmbed-Mini)")
    p.add_argument("--batch-size", type=int, default=8, help="items encoded and committed together (default 8)")
    p.add_argument("--no-ocr", action="store_true", help="do not run text recognition on scanned pages")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search an index")
    p.add_argument("query", metavar="QUERY", help="words to search for (or an image path with --image)")
    common(p)
    p.add_argument("--budget", metavar="R_Q,R_C", help="vectors used per query and per item (default: largest preset)")
    p.add_argument("--k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--image", action="store_true", help="QUERY is an image file: find similar items")
    p.add_argument("--only", choices=[what for what, kinds in ONLY.items() if kinds],
                   help="rank only photos, or only PDF pages and text files (default: everything)")
    p.add_argument("--checkpoint", metavar="ID_OR_PATH", help="default: the checkpoint recorded in the index")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("info", help="what an index holds")
    common(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("list", help="list indexed items")
    common(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("remove", help="remove items by id or by path (file, zip or folder)")
    p.add_argument("targets", nargs="+", metavar="ID_OR_PATH")
    common(p)
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser("compact", help="reclaim the space of removed items")
    common(p, json_flag=False)
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("eval", help="retrieval quality on a folder of files with judged queries (queries.json)",
                       description="Index DIR (its photos/ and documents/, or every supported file) into a "
                       "temporary index and print MRR, Recall@k and nDCG@10 at every preset budget and for the "
                       "single-vector MiniLM-L6 baseline, per kind of query. See app/evaluation.py.")
    p.add_argument("dir", metavar="DIR", help="folder with the files and queries.json")
    p.add_argument("--checkpoint", metavar="ID_OR_PATH", help="checkpoint folder or Hub id (default: the bundled "
                   "MetaEmbed-Mini)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of Markdown tables")
    p.add_argument("--k", type=int, nargs="+", default=[1, 5], metavar="K", help="Recall@K cutoffs (default 1 5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--record", metavar="SPLIT", help="also store the report in the checkpoint folder's "
                   "quality.json under SPLIT (e.g. 'sample collection (assets/examples)'), replacing only that "
                   "split's report; the app shows the checkpoint's reports against budget")
    p.add_argument("--against", metavar="REPORT", help="an earlier run's --json report on the same folder: also "
                   "print each budget's MRR difference from it, paired per query, with a 95%% bootstrap interval")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        print(f"error: --batch-size must be at least 1, got {args.batch_size}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (CliError, ValueError, FileNotFoundError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        return _fail(args, message)
    except sqlite3.DatabaseError as e:
        return _fail(args, f"the index database is damaged ({e}). {REBUILD_HINT}")
    except KeyboardInterrupt:
        # Ctrl-C: one line, not a traceback from wherever the model was. Indexing commits batch by batch (and a
        # file's items in order, app.ingest), so what was saved stays and a second run adds only the rest.
        saved = ("; everything indexed before stays, and running the same command again adds the rest"
                 if args.func is cmd_index else "")
        print(f"\ninterrupted{saved}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (`... | head`): stop quietly, as other command-line tools do.
        # Python would report the pipe again when it flushes stdout at exit, hence /dev/null.
        with contextlib.suppress(OSError, ValueError):  # ValueError: a stdout with no file behind it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as e:
        if e.errno == errno.ENOSPC:
            message = (f"the disk is full ({e.filename or 'while writing'}); everything committed before stays "
                       "indexed and consistent: free some space and run the command again")
        else:
            message = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
        return _fail(args, message)


def _fail(args: argparse.Namespace, message: str) -> int:
    """One line on stderr; with --json also a JSON report on stdout, so scripts see the error too."""
    print(f"error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message}, indent=2))
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
