"""The ``recommender`` command: thin commands over the library.

Heavy imports (torch, sentence-transformers, faiss) happen inside the commands,
so ``recommender --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recommender import __version__
from recommender.config import Settings
from recommender.errors import RecommenderError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3

MAIN_HELP = """\
Semantic related articles and search for a news archive.

Everything lives in one data folder (default: indexes/default, or
$RECOMMENDER_DATA_DIR, or --data-dir): a SQLite store with full-text search
and the published FAISS index. No server is needed.

typical session:
  recommender ingest articles.jsonl more.csv     # upsert by id; bad lines are reported
  recommender reindex                            # embed what changed, publish a new index
  recommender related bbc-2024-0042 --k 5        # the article's related list
  recommender search "Ilham Aliev Minsk Group"   # keyword + semantic search
  recommender rules add pin --article bbc-2024-0042 --target bbc-2024-0007 --position 2
  recommender eval related --dataset labelled.jsonl

exit codes: 0 success, 1 failure, 2 bad usage, 3 partial success (some input
lines were rejected, or some articles could not be embedded).
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument(
        "--data-dir", type=Path, default=argparse.SUPPRESS,
        help="data folder holding store.sqlite and index/ (default: $RECOMMENDER_DATA_DIR or indexes/default)",
    )
    group.add_argument(
        "--model", default=argparse.SUPPRESS,
        help="sentence-transformers model: a local folder or a cached hub name "
        "(default: the packaged all-MiniLM-L6-v2)",
    )
    group.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="a TOML config file")
    group.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recommender", description=MAIN_HELP, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"recommender {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, summary: str, examples: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=summary, description=summary, formatter_class=_Formatter,
            epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "),
        )
        _common(sub)
        return sub

    ingest = command(
        "ingest",
        "Upsert articles from JSONL or CSV files into the store, by id.",
        """
        recommender ingest articles.jsonl
        recommender ingest export-2024.csv export-2025.csv --data-dir /srv/news

        Each record needs id, title and body. Optional: url, published (ISO date),
        section (or category), tags (list, or "a|b" / "a,b" in CSV), lang. Other
        fields are kept as metadata. Bad lines are listed with their line number
        and skipped; the good ones are kept. Run `recommender reindex` afterwards.
        """,
    )
    ingest.add_argument("files", nargs="+", type=Path, metavar="FILE", help=".jsonl or .csv file")
    ingest.add_argument("--json", action="store_true", help="print the counts as JSON")
    ingest.set_defaults(handler=cmd_ingest)

    reindex = command(
        "reindex",
        "Embed new and changed articles, then build and atomically publish a new index.",
        """
        recommender reindex                 # incremental: only changed articles are embedded
        recommender reindex --json          # summary as JSON, for cron and CI
        recommender reindex --force         # rebuild the index even if nothing changed
        recommender reindex --dry-run       # what would be embedded, deleted and published
        recommender reindex --engine ray    # embed on Ray: $RAY_ADDRESS, a `ray start` cluster, or a local one
        recommender reindex --engine ray --ray-address ray://head:10001 --ray-workers 32

        With --engine ray (pip install 'recommender[ray]') the embedding runs as a
        Ray Data job on the cluster's workers, which need recommender and the model
        installed; the store and the index stay on this machine.

        Vectors are cached in the store by content hash, so a killed job resumes
        where it stopped. Passages whose text already has a vector (the unchanged
        paragraphs of an updated article, a syndicated copy) are not embedded
        again. Readers keep the old index until the new one is complete.

        exit codes: 0 done; 3 published, but some articles could not be embedded
        (they are listed, left out and retried next run); 1 nothing could be
        embedded or the index could not be built.
        """,
    )
    reindex.add_argument("--force", action="store_true", help="publish a new version even if nothing changed")
    reindex.add_argument("--dry-run", action="store_true", help="say what would be embedded and published; change nothing")
    reindex.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    reindex.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    reindex.add_argument(
        "--engine", choices=("local", "ray"), default="local",
        help="where to embed: in this process (default) or on a Ray cluster (needs the ray extra)",
    )
    reindex.add_argument(
        "--ray-address", metavar="ADDR", default=None,
        help="Ray cluster to use with --engine ray, e.g. ray://head:10001 or auto "
        "(default: $RAY_ADDRESS, else a cluster started here with `ray start`, else a local Ray for this run)",
    )
    reindex.add_argument(
        "--ray-workers", metavar="N", type=int, default=None,
        help="model copies embedding at once with --engine ray "
        "(default: the cluster's CPUs / 2; each uses 2 threads)",
    )
    reindex.set_defaults(handler=cmd_reindex)

    rules = command(
        "rules",
        "List, add and delete editorial rules: pins, blocks, boosts and buries.",
        """
        recommender rules list
        recommender rules list --article bbc-2024-0042 --json
        recommender rules add pin --article bbc-2024-0042 --target bbc-2024-0007 --position 2
        recommender rules add block --target bbc-2023-0999               # in every list and search
        recommender rules add block --article bbc-2024-0042 --target bbc-2024-0100
        recommender rules add boost --target explainer --type tag --weight 2
        recommender rules add bury --target sport --type section --article bbc-2024-0042
        recommender rules delete 12

        pin:   show TARGET in ARTICLE's related list at POSITION (1 = first); the
               other slots are filled automatically.
        block: never show TARGET in ARTICLE's list, or anywhere without --article.
               A block beats every other rule.
        boost, bury: move an article, a section or a tag up or down by WEIGHT
               standard deviations of the list's score (default 1).
        Rules live in the store, name articles by id, apply to the next request
        and survive reindexing and model changes.
        """,
    )
    rules.add_argument("action", choices=("list", "add", "delete"))
    rules.add_argument("kind_or_id", nargs="?", metavar="KIND|RULE_ID",
                       help="add: pin, block, boost or bury; delete: the rule's number")
    rules.add_argument("--article", help="the list the rule is for (required for pins; omit for every list)")
    rules.add_argument("--target", help="the article id (or section or tag name) the rule moves")
    rules.add_argument("--type", dest="target_type", choices=("article", "section", "tag"), default="article",
                       help="what --target names (boost and bury; default article)")
    rules.add_argument("--position", type=int, help="pins: the 1-based slot")
    rules.add_argument("--weight", type=float, help="boost and bury: strength (default 1)")
    rules.add_argument("--note", help="why (shown to editors)")
    rules.add_argument("--json", action="store_true", help="print JSON")
    rules.set_defaults(handler=cmd_rules)

    related = command(
        "related",
        "Print the articles most related to one article.",
        """
        recommender related nyt-2024-05-31-karabakh
        recommender related 1842 --k 5 --json

        Never lists the article itself, a near duplicate of it, or two copies of one story.
        """,
    )
    related.add_argument("article_id", metavar="ID")
    related.add_argument("--k", type=_k, default=10, help="how many (1-100, default 10)")
    related.add_argument("--json", action="store_true", help="print JSON")
    related.set_defaults(handler=cmd_related)

    search = command(
        "search",
        "Search the archive: exact names and paraphrases both work.",
        """
        recommender search "Ilham Aliev"
        recommender search "talks to end the war in the Caucasus" --k 5 --json
        """,
    )
    search.add_argument("query", metavar="QUERY")
    search.add_argument("--k", type=_k, default=10, help="how many (1-100, default 10)")
    search.add_argument("--json", action="store_true", help="print JSON")
    search.set_defaults(handler=cmd_search)

    serve = command(
        "serve",
        "Serve the JSON API, the embeddable widget and the editors' page over HTTP.",
        """
        recommender serve                                  # http://127.0.0.1:8000/
        recommender serve --port 8080 --workers 2 --data-dir /srv/news
        RECOMMENDER_API_KEY=secret recommender serve       # enables PUT/DELETE/POST of articles
        RECOMMENDER_CORS_ORIGINS=https://news.example recommender serve

        curl 'http://127.0.0.1:8000/v1/articles/ID/related?k=5'
        curl 'http://127.0.0.1:8000/v1/search?q=harbour+bridge&section=local'
        curl -X PUT -H 'Authorization: Bearer secret' -H 'Content-Type: application/json' \\
             -d '{"title": "...", "body": "..."}' http://127.0.0.1:8000/v1/articles/ID
        """,
    )
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=None, help="worker processes (default 1)")
    serve.set_defaults(handler=cmd_serve)

    evaluate = command(
        "eval",
        "Measure quality on labelled data, against TF-IDF and BM25 baselines in the same run.",
        """
        recommender eval related --dataset ../shared/data/bbc_news.jsonl
        recommender eval search --dataset ../shared/data/time_docs.jsonl \\
                                --queries ../shared/data/time_queries.jsonl --json
        recommender eval related --dataset ../shared/data/newswcl50.jsonl --ablation

        related: every article with a `group` is a query; articles sharing its group
                 are relevant. Lists are the served ones (the engine's related
                 list with k = 100, confidence floor included). Copies are
                 found from the text alone (word 5-grams, see docs/evaluation.md):
                 story map counts each copy cluster once, dup@10 is the share
                 of lists showing one text twice. Also MAP, nDCG@10, P@5.
        search:  each line of --queries has `query` and `relevant_ids` (and
                 optionally `source_id`, left out of the ranking).
                 Metrics: MAP, nDCG@10, MRR, recall@100.
        --ablation adds rows with dedup, the floor, recency, diversity (MMR)
        and hybrid scoring each switched against the configured engine.
        The dataset is indexed into its own folder (default indexes/eval/<name>),
        never into your data folder; reruns reuse its cached vectors.
        """,
    )
    evaluate.add_argument("task", choices=("related", "search"))
    evaluate.add_argument("--dataset", type=Path, required=True, help="JSONL articles (with `group` for related)")
    evaluate.add_argument("--queries", type=Path, help="JSONL queries (search only)")
    evaluate.add_argument("--depth", type=int, default=None, help="rank depth (default 100, the most a widget may ask)")
    evaluate.add_argument("--lists", type=Path, help="related: also write the engine's lists here (JSONL: id, items)")
    evaluate.add_argument("--json", action="store_true", help="print only the JSON report")
    evaluate.add_argument(
        "--ablation", action="store_true",
        help="also rank with dedup, recency, diversity (MMR) and hybrid scoring each switched against the settings",
    )
    evaluate.set_defaults(handler=cmd_eval)
    return parser


def _k(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100, got {value}")
    return value


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {
        "data_dir": getattr(args, "data_dir", None),
        "model": getattr(args, "model", None),
        "config_file": getattr(args, "config", None),
        **extra,
    }
    return Settings.load(overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except RecommenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted; work already committed is kept", file=sys.stderr)
        return 130


# -- commands -------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    from recommender.ingest import ingest_files

    settings = _settings(args)
    report = ingest_files(settings, args.files)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for rejected in report.rejected:
            print(f"rejected {rejected}", file=sys.stderr)
        for failure in report.failed_files:
            print(f"error: {failure}", file=sys.stderr)
        print(
            f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
            f"{len(report.rejected)} rejected  ({settings.store_path})"
        )
    if report.failed_files and report.added + report.updated + report.unchanged == 0:
        return EXIT_FAILURE
    return EXIT_PARTIAL if report.rejected or report.failed_files else EXIT_OK


def cmd_reindex(args: argparse.Namespace) -> int:
    from recommender.pipeline import EmbeddingError, reindex
    from recommender.service import reindex_lock
    from recommender.store import Store

    settings = _settings(args)
    engine = None
    if args.engine == "ray":
        from recommender.ray_engine import RayEngine, import_ray

        if args.ray_workers is not None and args.ray_workers < 1:
            print("error: --ray-workers must be at least 1", file=sys.stderr)
            return EXIT_USAGE
        import_ray()  # fails here, with the pip command, if the extra is not installed
        engine = RayEngine(settings, address=args.ray_address, concurrency=args.ray_workers)
    elif args.ray_address is not None or args.ray_workers is not None:
        print("error: --ray-address and --ray-workers need --engine ray", file=sys.stderr)
        return EXIT_USAGE
    with Store.open(settings.store_path) as store, reindex_lock(settings.data_dir):
        if store.count() == 0:
            print(f"error: no articles in {settings.store_path}; run `recommender ingest FILE` first", file=sys.stderr)
            return EXIT_FAILURE
        try:
            report = reindex(
                settings, store, lambda: _load_embedder(settings), progress=not args.no_progress,
                force=args.force, dry_run=args.dry_run, engine=engine,
            )
        except EmbeddingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        failed_ids = [s.article.id for s in store.get_many(report.failed).values()]
    if args.json:
        print(json.dumps({**report.to_dict(), "failed": failed_ids}))
    elif args.dry_run:
        action = f"would publish a new version: {report.reason}" if report.reason else "the published index is current"
        print(f"would embed {report.to_embed} of {report.articles} articles, {report.deleted} deleted; {action}")
    else:
        state = f"published {report.version}" if report.published else f"unchanged, still serving {report.version}"
        print(
            f"{report.embedded} embedded, {report.skipped} skipped, {report.deleted} deleted, "
            f"{report.articles} articles in {report.seconds:.1f}s ({report.docs_per_second} docs/s); {state}"
        )
    if failed_ids:
        shown = ", ".join(failed_ids[:10]) + (" ..." if len(failed_ids) > 10 else "")
        print(
            f"warning: {len(failed_ids)} articles could not be embedded and are not in the index: {shown}. "
            "The log above says why; the next reindex retries them.",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return EXIT_OK


def cmd_related(args: argparse.Namespace) -> int:
    from recommender.api import present
    from recommender.service import Engine

    settings = _settings(args)
    with Engine.open(settings) as engine:
        items = present.items(engine.related(args.article_id, args.k))
    return _print_items(args, {"article_id": args.article_id, "items": items})


def cmd_search(args: argparse.Namespace) -> int:
    from recommender.api import present
    from recommender.service import Engine

    settings = _settings(args)
    with Engine.open(settings) as engine:
        items = present.search_items(engine.search(args.query, args.k), args.query)
    return _print_items(args, {"query": args.query, "items": items})


def _print_items(args: argparse.Namespace, payload: dict) -> int:
    if args.json:
        print(json.dumps(payload, indent=2, ensure_ascii=False))
        return EXIT_OK
    if not payload["items"]:
        print("no results" if "query" in payload else "nothing passes the confidence floor (min_confidence)")
    for rank, item in enumerate(payload["items"], 1):
        date = item["published"] or ""
        if item.get("source") in ("manual", "fallback"):
            score = "pinned" if item["source"] == "manual" else "filler"
        elif item.get("confidence") is not None:
            score = f"{round(100 * item['confidence']):d}%"
        else:
            score = f"{item['score']:6.2f}"
        print(f"{rank:>2}. {score:>6}  {item['id']}  {date:10.10}  {item['title'] or '(no title)'}")
    return EXIT_OK


def cmd_rules(args: argparse.Namespace) -> int:
    from recommender.errors import InvalidInput
    from recommender.rules import parse_rule
    from recommender.store import Store

    settings = _settings(args)
    with Store.open(settings.store_path) as store:
        if args.action == "list":
            found = [r.to_dict() for r in store.rules(args.article)]
            if args.json:
                print(json.dumps({"rules": found}, indent=2))
            for r in [] if args.json else found:
                where = f"in {r['article']}'s list" if r["article"] else "everywhere"
                detail = f" at {r['position']}" if r["position"] else f" by {r['weight']:g}" if r["weight"] else ""
                target = r["target"] if r["target_type"] == "article" else f"{r['target_type']} {r['target']}"
                print(f"{r['id']:>5}  {r['kind']:<5}  {target}{detail} {where}  {r['note']}".rstrip())
            if not found and not args.json:
                print("no rules")
            return EXIT_OK
        if args.action == "delete":
            if not (args.kind_or_id or "").isdigit():
                print("error: rules delete needs the rule's number (see `recommender rules list`)", file=sys.stderr)
                return EXIT_USAGE
            if not store.delete_rule(int(args.kind_or_id)):
                print(f"error: no rule {args.kind_or_id}", file=sys.stderr)
                return EXIT_FAILURE
            print(f"deleted rule {args.kind_or_id}")
            return EXIT_OK
        data = {"kind": args.kind_or_id, "target": args.target, "article": args.article,
                "target_type": args.target_type, "position": args.position, "weight": args.weight, "note": args.note}
        try:
            rule = parse_rule({k: v for k, v in data.items() if v is not None})
        except InvalidInput as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        for name in rule.article_ids:
            if store.get(name) is None:
                print(f"error: no article with id {name!r}", file=sys.stderr)
                return EXIT_FAILURE
        added = store.add_rule(rule)
        print(json.dumps(added.to_dict()) if args.json else f"added rule {added.id}: {added.kind} {added.target}")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from recommender import evaluate

    if args.task == "search" and not args.queries:
        print("error: eval search needs --queries Q.jsonl", file=sys.stderr)
        return EXIT_USAGE
    data_dir = getattr(args, "data_dir", None) or Path("indexes/eval") / args.dataset.stem
    settings = _settings(args, data_dir=data_dir)
    if args.task == "related":
        report = evaluate.evaluate_related(
            settings, args.dataset, depth=args.depth, progress=not args.json, ablation=args.ablation,
            lists_out=args.lists,
        )
    else:
        report = evaluate.evaluate_search(
            settings, args.dataset, args.queries, depth=args.depth, progress=not args.json, ablation=args.ablation
        )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(evaluate.format_table(report))
        print()
        print(json.dumps(report))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    import dataclasses

    import uvicorn

    settings = _settings(args, host=args.host, port=args.port, workers=args.workers)
    if settings.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    # Worker processes build their settings from the environment: hand them ours.
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if value is not None:
            os.environ[f"RECOMMENDER_{field.name.upper()}"] = str(value)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from recommender.api.metrics import prepare_multiprocess_dir
    prepare_multiprocess_dir(settings.data_dir)  # /metrics adds up all the workers' values
    uvicorn.run(
        "recommender.api.app:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        # httptools with a header size limit and read deadlines (recommender/api/server.py)
        http="recommender.api.server:GuardedHttpToolsProtocol",
        timeout_keep_alive=settings.keep_alive_seconds,
        limit_concurrency=settings.limit_concurrency,
        log_level="info" if args.verbose else "warning",
        access_log=bool(args.verbose),
    )
    return EXIT_OK


def _load_embedder(settings: Settings):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from recommender.embed import load_embedder

    return load_embedder(settings)


if __name__ == "__main__":
    sys.exit(main())
