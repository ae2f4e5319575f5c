"""The ``recommender`` command: thin commands over the library.

Heavy imports (torch, sentence-transformers, faiss) happen inside the commands,
so ``recommender --help`` stays fast.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from recommender import __version__
from recommender.errors import InvalidInput, RecommenderError, storage_fault

if TYPE_CHECKING:
    from recommender.config import Settings
    from recommender.embedders import Embedder, LazyEmbedder

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3

MAIN_HELP = """\
Semantic related articles and search for a news archive.

Everything lives in one data folder (default: indexes/default, or
$RECOMMENDER_DATA_DIR, or --data-dir): a SQLite store of the articles
and the published FAISS index. No server is needed.

typical session:
  recommender ingest articles.jsonl more.csv     # upsert by id; bad lines are reported
  recommender reindex                            # embed what changed, publish a new index
  recommender related bbc-2024-0042 --k 5        # the article's related list
  recommender search "Ilham Aliev Minsk Group"   # keyword + semantic search
  recommender rules add pin bbc-2024-0007 --article bbc-2024-0042 --position 2
  recommender eval related --dataset labelled.jsonl

exit codes: 0 success, 1 failure, 2 bad usage, 3 partial success (some input
lines were rejected, or some articles could not be embedded).
"""

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
COMMON = "recommender.common"
"""ctx.meta key of the common options (--data-dir, --model, --config, -v)."""

EmbedderLoader = Callable[["Settings"], "Embedder"]


# -- help layout: raw text and examples, as written ----------------------------


class _Layout(click.Command):
    """Help and epilog printed as written (not re-wrapped); the common options
    in their own section; subcommands in the order they were defined."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self.help:
            formatter.write_paragraph()
            formatter.write(textwrap.indent(inspect.cleandoc(self.help), " " * (formatter.current_indent + 2)) + "\n")

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self.epilog:
            formatter.write_paragraph()
            formatter.write(textwrap.indent(self.epilog.rstrip(), " " * formatter.current_indent) + "\n")

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        own: list[tuple[str, str]] = []
        common: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and not isinstance(param, click.Argument):
                (common if getattr(param, "common", False) else own).append(record)
        for title, records in (("Options", own), ("Common options", common)):
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)
        if isinstance(self, click.Group):
            self.format_commands(ctx, formatter)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(getattr(self, "commands", {}))  # groups: in the order they were defined


class _Command(_Layout):
    def invoke(self, ctx: click.Context) -> Any:
        verbose = ctx.meta.get(COMMON, {}).get("verbose", 0)
        level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        return super().invoke(ctx)


class _Group(_Layout, click.Group):
    command_class = _Command
    group_class = type


def _examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


# -- common options -------------------------------------------------------------


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    common = ctx.meta.setdefault(COMMON, {})
    if param.name == "verbose":
        common["verbose"] = common.get("verbose", 0) + value
    elif value is not None:
        common[param.name] = value


class _CommonOption(click.Option):
    common = True


def _option(*decls: str, **attrs: Any) -> Callable:
    return click.option(*decls, cls=_CommonOption, expose_value=False, callback=_remember, **attrs)


def common_options(f: Callable) -> Callable:
    """--data-dir, --model, --config and -v, on every command (and on the
    ``rules`` and ``eval`` groups, so they may come before the subcommand)."""
    options = [
        _option("--data-dir", "data_dir", type=click.Path(path_type=Path), metavar="DIR",
                help="data folder holding store.sqlite and index/ (default: $RECOMMENDER_DATA_DIR or indexes/default)"),
        _option("--model", "model", metavar="MODEL",
                help="sentence-transformers model: a local folder or a cached hub name "
                "(default: the packaged all-MiniLM-L6-v2)"),
        _option("--config", "config_file", type=click.Path(path_type=Path), metavar="FILE", help="a TOML config file"),
        _option("-v", "--verbose", "verbose", count=True, help="log more (-vv for debug)"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _common() -> dict[str, Any]:
    return click.get_current_context().meta.get(COMMON, {})


def _settings(**extra: Any) -> Settings:
    from recommender.config import Settings

    common = _common()
    overrides = {
        "data_dir": common.get("data_dir"),
        "model": common.get("model"),
        "config_file": common.get("config_file"),
        **extra,
    }
    settings = Settings.load(overrides)
    obj = click.get_current_context().find_root().obj
    if isinstance(obj, dict):
        obj["settings"] = settings  # main names its data folder if a write fails on a full disk
    return settings


def _embedder(settings: Settings) -> LazyEmbedder:
    """The command's embedder: its backend resolved here, once, and loaded on
    first use (the model ``main``'s ``load_embedder`` gives, in tests)."""
    from recommender.embedders import LazyEmbedder, resolve

    hook: EmbedderLoader | None = click.get_current_context().find_root().obj["load_embedder"]
    return LazyEmbedder(resolve(settings), None if hook is None else lambda: hook(settings))


@contextmanager
def progress_bar(desc: str, unit: str = "it", *, enabled: bool = True) -> Iterator[Callable[[int, int], None] | None]:
    """An ``on_progress(done, total)`` callback drawing a tqdm bar on stderr; a
    call with fewer done than before (a new stage) starts a new bar."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None or done < bar.n or total != bar.total:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


# -- the command group ----------------------------------------------------------


@click.group(cls=_Group, help=MAIN_HELP, context_settings=CONTEXT, no_args_is_help=True)
@click.version_option(__version__, "--version", prog_name="recommender", message="%(prog)s %(version)s")
def cli() -> None:
    pass


def main(argv: Sequence[str] | None = None, *, load_embedder: EmbedderLoader | None = None) -> int:
    """Run the command line; returns the exit code. ``load_embedder(settings)``
    replaces the sentence-transformers model (tests)."""
    obj: dict[str, Any] = {"load_embedder": load_embedder}
    try:
        code = cli.main(args=None if argv is None else list(argv), prog_name="recommender",
                        standalone_mode=False, obj=obj)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        print("interrupted; work already committed is kept", file=sys.stderr)
        return 130
    except RecommenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:
        # A full disk or a refused write that no boundary named (an index
        # file, an export): one line naming the data folder, never a traceback.
        settings = obj.get("settings")
        fault = storage_fault(exc, getattr(exc, "filename", None) or (settings.data_dir if settings else None))
        if fault is None:
            raise
        print(f"error: {fault}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted; work already committed is kept", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else EXIT_OK


# -- commands -------------------------------------------------------------


@cli.command(
    "ingest",
    short_help="Upsert articles from JSONL or CSV files into the store, by id.",
    help="Upsert articles from JSONL or CSV files into the store, by id.",
    epilog=_examples("""
        recommender ingest articles.jsonl
        recommender ingest export-2024.csv export-2025.csv --data-dir /srv/news

        Each record needs id, title and body. Optional: url, published (ISO date),
        section (or category), tags (list, or "a|b" / "a,b" in CSV), lang. Other
        fields are kept as metadata. Bad lines are listed with their line number
        and skipped; the good ones are kept. Run `recommender reindex` afterwards.
    """),
)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="FILE...",
                help=".jsonl or .csv file")
@click.option("--json", "as_json", is_flag=True, help="print the counts as JSON")
@common_options
def cmd_ingest(files: tuple[Path, ...], as_json: bool) -> int:
    from recommender.ingest import ingest_files
    from recommender.store import store_location

    settings = _settings()
    report = ingest_files(settings, list(files))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for rejected in report.rejected:
            print(f"rejected {rejected}", file=sys.stderr)
        for failure in report.failed_files:
            print(f"error: {failure}", file=sys.stderr)
        print(
            f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
            f"{len(report.rejected)} rejected  ({store_location(settings)})"
        )
    if report.failed_files and report.added + report.updated + report.unchanged == 0:
        return EXIT_FAILURE
    return EXIT_PARTIAL if report.rejected or report.failed_files else EXIT_OK


@cli.command(
    "reindex",
    short_help="Embed new and changed articles, then build and atomically publish a new index.",
    help="Embed new and changed articles, then build and atomically publish a new index.",
    epilog=_examples("""
        recommender reindex                 # incremental: only changed articles are embedded
        recommender reindex --json          # summary as JSON, for cron and CI
        recommender reindex --full          # build a new version now, replacing the segments
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

        A few writes since the live version are published as a segment beside
        it, in seconds whatever the archive's size; once the segments hold
        segment_merge_fraction of the archive (or with --full), a full build
        replaces them.

        exit codes: 0 done; 3 published, but some articles could not be embedded
        (they are listed, left out and retried next run); 1 nothing could be
        embedded or the index could not be built.
    """),
)
@click.option("--force", is_flag=True, help="publish a new version even if nothing changed (and retrain the "
              "inverted files)")
@click.option("--full", is_flag=True, help="build a new version from every article, replacing the segments, "
              "instead of publishing the writes as a segment")
@click.option("--dry-run", is_flag=True, help="say what would be embedded and published; change nothing")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON object")
@click.option("--no-progress", is_flag=True, help="hide the progress bar")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="where to embed: in this process or on a Ray cluster (needs the ray extra)")
@click.option("--ray-address", metavar="ADDR", default=None,
              help="Ray cluster to use with --engine ray, e.g. ray://head:10001 or auto "
              "(default: $RAY_ADDRESS, else a cluster started here with `ray start`, else a local Ray for this run)")
@click.option("--ray-workers", metavar="N", type=click.IntRange(min=1), default=None,
              help="model copies embedding at once with --engine ray (default: the cluster's CPUs / 2; each uses 2 "
              "threads)")
@common_options
def cmd_reindex(force: bool, full: bool, dry_run: bool, as_json: bool, no_progress: bool, engine: str,
                ray_address: str | None, ray_workers: int | None) -> int:
    from recommender import directory
    from recommender.embed_jobs import EmbeddingError
    from recommender.pipeline import reindex
    from recommender.store import open_store, store_location

    settings = _settings()
    embedder = _embedder(settings)
    embed_engine = None
    if engine == "ray":
        from recommender.ray_engine import RayEngine, import_ray

        import_ray()  # fails here, with the pip command, if the extra is not installed
        embed_engine = RayEngine(embedder.spec, address=ray_address, concurrency=ray_workers)
    elif ray_address is not None or ray_workers is not None:
        print("error: --ray-address and --ray-workers need --engine ray", file=sys.stderr)
        return EXIT_USAGE
    if not dry_run:  # what killed writers left: staging versions, .tmp files and folders whose lock no writer holds
        directory.remove_leftovers(settings.data_dir, settings.index_root)
    with open_store(settings) as store:
        if store.count() == 0:
            print(f"error: no articles in {store_location(settings)}; run `recommender ingest FILE` first", file=sys.stderr)
            return EXIT_FAILURE
        try:
            with progress_bar("embedding", "doc", enabled=not no_progress) as on_progress:
                report = reindex(
                    settings, store, embedder, on_progress=on_progress,
                    force=force, full=full, dry_run=dry_run, engine=embed_engine,
                )
        except EmbeddingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        failed_ids = [s.article.id for s in store.get_many(report.failed).values()]
    if as_json:
        print(json.dumps({**report.to_dict(), "failed": failed_ids}))
    elif dry_run:
        action = f"would publish a new version: {report.reason}" if report.reason else "the published index is current"
        print(f"would embed {report.to_embed} of {report.articles} articles, {report.deleted} deleted; {action}")
    else:
        state = f"published {report.version}" if report.published else f"unchanged, still serving {report.version}"
        if report.segment:
            state = f"published segment {report.segment} beside {report.version}"
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


@cli.command(
    "verify",
    short_help="Check every file of the index, the exported models and the store.",
    help="Check every file of the index, the exported models and the store.",
    epilog=_examples("""
        recommender verify
        recommender verify --json

        Checks CURRENT; each version in index/versions and each of its
        segments (every file's size and checksum as recorded in its manifest,
        each array's shape and bounds); the exported models under models/
        (the checksums recorded beside them); and the store (SQLite's
        integrity_check). A server never serves a view that fails: it serves
        the newest one that verifies and says which it refused in /readyz.

        exit codes: 0 everything verifies; 1 something failed (each failure
        names its file; `recommender repair` rebuilds it from the store).
    """),
)
@click.option("--json", "as_json", is_flag=True, help="print every check as JSON")
@common_options
def cmd_verify(as_json: bool) -> int:
    from recommender.repair import verify

    report = verify(_settings())
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_checks(report.checks)
        print("everything verifies" if report.ok else f"{len(report.failed())} failed; run `recommender repair`")
    return EXIT_OK if report.ok else EXIT_FAILURE


def _print_checks(checks: list[Any]) -> None:
    for check in checks:
        state = "ok    " if check.ok else "FAILED"
        live = " (live)" if check.live else ""
        note = f"  ({check.note})" if check.note else ""
        print(f"{state} {check.kind} {check.name}{live}{note}")
        for problem in check.problems:
            print(f"       {problem}")


@cli.command(
    "repair",
    short_help="Rebuild from the store whatever `recommender verify` finds damaged.",
    help="Rebuild from the store whatever `recommender verify` finds damaged.",
    epilog=_examples("""
        recommender repair
        recommender repair --json

        When any part of the live view fails (CURRENT, its version, a segment,
        a manifest), a new version is built from the store's articles and
        published (vectors cached in the store are reused), whatever state
        the index folder is in. Damaged versions, segments and exports that
        nothing serves are removed (exports are made again when next used).
        Then everything is verified again. A damaged store cannot be rebuilt
        from itself: restore it from a backup.

        exit codes: 0 everything verifies afterwards; 1 something still fails.
    """),
)
@click.option("--json", "as_json", is_flag=True, help="print what was done and the checks after, as JSON")
@click.option("--no-progress", is_flag=True, help="hide the progress bar")
@common_options
def cmd_repair(as_json: bool, no_progress: bool) -> int:
    from recommender.repair import repair
    from recommender.store import open_store

    settings = _settings()
    embedder = _embedder(settings)
    with open_store(settings) as store, progress_bar("embedding", "doc", enabled=not no_progress) as on_progress:
        report = repair(settings, store, embedder, on_progress=on_progress)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for action in report.actions or ["nothing to repair"]:
            print(action)
        _print_checks(report.after.checks)
        print("everything verifies" if report.ok else f"{len(report.after.failed())} still fail")
    return EXIT_OK if report.ok else EXIT_FAILURE


# -- rules ------------------------------------------------------------------------

RULES_HELP = """\
pin:   show TARGET in ARTICLE's related list at POSITION (1 = first); the
       other slots are filled automatically.
block: never show TARGET in ARTICLE's list, or anywhere without --article.
       A block beats every other rule.
boost, bury: move an article, a section or a tag up or down by WEIGHT
       standard deviations of the list's score (default 1).
Rules live in the store, name articles by id, apply to the next request
and survive reindexing and model changes.
"""


@cli.group(
    "rules",
    short_help="List, add and delete editorial rules: pins, blocks, boosts and buries.",
    help="List, add and delete editorial rules: pins, blocks, boosts and buries.\n\n" + RULES_HELP,
    epilog=_examples("""
        recommender rules list
        recommender rules list --article bbc-2024-0042 --json
        recommender rules add pin bbc-2024-0007 --article bbc-2024-0042 --position 2
        recommender rules add block bbc-2023-0999                        # in every list and search
        recommender rules add block bbc-2024-0100 --article bbc-2024-0042
        recommender rules add boost explainer --target-type tag --weight 2
        recommender rules add bury sport --target-type section --article bbc-2024-0042
        recommender rules delete 12
    """),
    no_args_is_help=True,
)
@common_options
def rules() -> None:
    pass


def _rule_line(r: dict) -> str:
    where = f"in {r['article']}'s list" if r["article"] else "everywhere"
    detail = f" at {r['position']}" if r["position"] else f" by {r['weight']:g}" if r["weight"] else ""
    target = r["target"] if r["target_type"] == "article" else f"{r['target_type']} {r['target']}"
    return f"{r['id']:>5}  {r['kind']:<5}  {target}{detail} {where}  {r['note']}".rstrip()


@rules.command(
    "list",
    short_help="List the rules, all or those of one article's list.",
    help="List the rules: all of them, or with --article those made for that article's list.",
    epilog=_examples("""
        recommender rules list
        recommender rules list --article bbc-2024-0042 --json
    """),
)
@click.option("--article", metavar="ID", help="only the rules made for this article's list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@common_options
def cmd_rules_list(article: str | None, as_json: bool) -> int:
    from recommender.service import Engine

    with Engine.open(_settings(), load_index=False) as engine:
        found = [r.to_dict() for r in engine.rules(article)]
    if as_json:
        print(json.dumps({"rules": found}, indent=2))
    elif not found:
        print("no rules")
    else:
        for r in found:
            print(_rule_line(r))
    return EXIT_OK


@rules.command(
    "add",
    short_help="Add a pin, block, boost or bury rule.",
    help="Add a rule: KIND is pin, block, boost or bury; TARGET the article id (or section or tag name) it "
    "moves.\n\n" + RULES_HELP,
    epilog=_examples("""
        recommender rules add pin bbc-2024-0007 --article bbc-2024-0042 --position 2
        recommender rules add block bbc-2023-0999                        # in every list and search
        recommender rules add boost explainer --target-type tag --weight 2
        recommender rules add bury sport --target-type section --article bbc-2024-0042 --note "off-topic"
        recommender rules add pin --article bbc-2024-0042 --target bbc-2024-0007 --position 2   # --target works too
    """),
)
@click.argument("kind", type=click.Choice(["pin", "block", "boost", "bury"]), metavar="KIND",
                help="pin, block, boost or bury")
@click.argument("target", required=False, metavar="[TARGET]",
                help="the article id (or section or tag name) the rule moves; or --target")
@click.option("--target", "target_option", metavar="TARGET", help="the same as the TARGET argument")
@click.option("--article", metavar="ID", help="the list the rule is for (required for pins; omit for every list)")
@click.option("--target-type", "--type", "target_type", type=click.Choice(["article", "section", "tag"]),
              default="article", show_default=True, help="what TARGET names (boost and bury)")
@click.option("--position", type=int, help="pins: the 1-based slot")
@click.option("--weight", type=float, help="boost and bury: strength (default 1)")
@click.option("--note", help="why (shown to editors)")
@click.option("--json", "as_json", is_flag=True, help="print the rule as JSON")
@common_options
def cmd_rules_add(kind: str, target: str | None, target_option: str | None, article: str | None, target_type: str,
                  position: int | None, weight: float | None, note: str | None, as_json: bool) -> int:
    from recommender.rules import parse_rule
    from recommender.service import Engine

    if target is not None and target_option is not None and target != target_option:
        raise click.UsageError("give the target once: as TARGET or as --target")
    data = {"kind": kind, "target": target if target is not None else target_option, "article": article,
            "target_type": target_type, "position": position, "weight": weight, "note": note}
    try:
        rule = parse_rule({k: v for k, v in data.items() if v is not None})
    except InvalidInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with Engine.open(_settings(), load_index=False) as engine:
        added = engine.add_rule(rule)
    print(json.dumps(added.to_dict()) if as_json else f"added rule {added.id}: {added.kind} {added.target}")
    return EXIT_OK


@rules.command(
    "delete",
    short_help="Delete a rule by its number.",
    help="Delete a rule by its number (the first column of `recommender rules list`).",
    epilog=_examples("""
        recommender rules delete 12
    """),
)
@click.argument("rule_id", type=int, metavar="RULE_ID", help="the rule's number")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@common_options
def cmd_rules_delete(rule_id: int, as_json: bool) -> int:
    from recommender.service import Engine

    with Engine.open(_settings(), load_index=False) as engine:
        engine.delete_rule(rule_id)
    print(json.dumps({"deleted": rule_id}) if as_json else f"deleted rule {rule_id}")
    return EXIT_OK


# -- reading --------------------------------------------------------------------

_K = click.IntRange(1, 100)


@cli.command(
    "related",
    short_help="Print the articles most related to one article.",
    help="Print the articles most related to one article.",
    epilog=_examples("""
        recommender related nyt-2024-05-31-karabakh
        recommender related 1842 --k 5 --json

        Never lists the article itself, a near duplicate of it, or two copies of one story.
    """),
)
@click.argument("article_id", metavar="ID", help="the article's id")
@click.option("--k", type=_K, default=10, show_default=True, help="how many (1-100)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@common_options
def cmd_related(article_id: str, k: int, as_json: bool) -> int:
    from recommender.api import present
    from recommender.service import Engine

    with Engine.open(_settings()) as engine:
        items = present.items(engine.related(article_id, k))
    return _print_items({"article_id": article_id, "items": items}, as_json)


@cli.command(
    "search",
    short_help="Search the archive: exact names and paraphrases both work.",
    help="Search the archive: exact names and paraphrases both work.",
    epilog=_examples("""
        recommender search "Ilham Aliev"
        recommender search "talks to end the war in the Caucasus" --k 5 --json
    """),
)
@click.argument("query", metavar="QUERY", help="the words to look for")
@click.option("--k", type=_K, default=10, show_default=True, help="how many (1-100)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@common_options
def cmd_search(query: str, k: int, as_json: bool) -> int:
    from recommender.api import present
    from recommender.service import Engine

    settings = _settings()
    if settings.query_backend == "auto":  # one query: checking the ONNX model costs more than it saves
        settings = settings.replace(query_backend="torch")
    with Engine.open(settings) as engine:
        items = present.search_items(engine.search(query, k), query)
    return _print_items({"query": query, "items": items}, as_json)


@cli.command(
    "export-query-model",
    short_help="Export the model to ONNX for search queries and check it against torch.",
    help="Export the model to ONNX for search queries and check it against torch.",
    epilog=_examples("""
        recommender export-query-model            # export if missing, then check and time it
        recommender export-query-model --force    # export again (a refused or damaged file)
        recommender export-query-model --json

        The file is written under the data folder (models/onnx/<key>/model.onnx;
        the key names the model and the torch, transformers, sentence-transformers,
        onnx and onnxruntime versions). `recommender serve` exports it itself at
        start when it is missing; this command does it ahead, and says whether the
        export passes the check (every sample text's vector within cosine 0.999
        of torch's) and how long one query takes each way here.

        exit codes: 0 exported and checked; 1 the model cannot be exported, or its
        vectors differ from torch's (serve then embeds queries on torch).
    """),
)
@click.option("--force", is_flag=True, help="export again even if an export exists")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@common_options
def cmd_export_query_model(force: bool, as_json: bool) -> int:
    from recommender.embedders.onnx_backend import export_file, export_onnx
    from recommender.embedders.query import median_seconds, open_query_model, torch_reference
    from recommender.embedders.torch_backend import SentenceTransformerEmbedder

    embedder = _embedder(_settings())
    reference = torch_reference(embedder.get())  # articles on an exported backend: the query model is torch's
    if not isinstance(reference, SentenceTransformerEmbedder):
        print("error: the embedder is not a sentence-transformers model", file=sys.stderr)
        return EXIT_FAILURE
    target = export_file(embedder.spec)
    try:
        if force:
            export_onnx(reference.model, target, force=True)
        query_model = open_query_model(embedder.spec, reference)
    except Exception as exc:  # not exportable, a failed export, vectors that differ
        print(f"error: the query model was refused: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    onnx_seconds, torch_seconds = median_seconds([query_model, reference])
    result = {"path": str(target), "min_cosine": query_model.min_cosine,
              "onnx_ms": round(onnx_seconds * 1e3, 3), "torch_ms": round(torch_seconds * 1e3, 3)}
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{target}\nmin cosine to torch {query_model.min_cosine:.6f}; one query: "
              f"{result['onnx_ms']:.2f} ms on onnxruntime, {result['torch_ms']:.2f} ms on torch")
    return EXIT_OK


@cli.command(
    "backends",
    short_help="Which backend embeds articles here, and how each measured on this machine.",
    help="Which backend embeds articles here (torch, onnx, openvino), why, and how each measured on this machine.",
    epilog=_examples("""
        recommender backends                  # the choice, why, and the measurement kept for this machine
        recommender backends --measure        # export and measure every candidate, keep the fastest that passes
        RECOMMENDER_BACKEND=openvino RECOMMENDER_PRECISION=int8 recommender backends --measure

        With backend = "auto" (the default) a job never waits for a measurement:
        articles embed on torch, in the precision the CPU runs natively, until
        --measure has measured every installed candidate on 50 article passages
        against torch float32 (its speed, and its cosine to torch's vectors) and
        kept the fastest whose every vector keeps a cosine of at least 0.995, in
        $XDG_CACHE_HOME/recommender/backends.json (~/.cache/recommender), for this
        model, these settings, this CPU and these library versions. New data
        folders then embed on it; a published index keeps the backend its vectors
        were made on (set `backend` and `precision` to move it: it embeds again).
        Exports (ONNX, OpenVINO, OpenVINO int8 calibrated on article passages) are
        made once, under <data_dir>/models. OpenVINO needs the extra:
        pip install 'recommender[openvino]'.

        exit codes: 0 done; 1 settings that cannot run (torch int8, onnx bfloat16,
        a backend that is not installed).
    """),
)
@click.option("--measure", is_flag=True, help="measure the candidates on this machine and keep the fastest that passes")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@common_options
def cmd_backends(measure: bool, as_json: bool) -> int:
    from recommender.embedders import candidates
    from recommender.embedders.choice import MIN_COSINE, choose, measurement, resolve_choice
    from recommender.embedders.machine import cpu_info

    settings = _settings()
    choices = candidates(settings)
    if measure:
        choose(settings)
    chosen, why = resolve_choice(settings)
    record = measurement(settings) or {}
    cpu = cpu_info()
    payload = {"backend": chosen.backend, "precision": chosen.precision, "why": why,
               "candidates": [c.name for c in choices], "min_cosine": MIN_COSINE, "cpu": cpu,
               "measured": record.get("measured", []), "measured_at": record.get("at"),
               "measured_choice": record.get("choice")}
    if as_json:
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    print(f"articles embed on {chosen.name}: {why} (candidates: {', '.join(payload['candidates'])})")
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, {' '.join(cpu['flags']) or 'no AVX-512/AMX flags'}")
    if payload["measured"]:
        print(f"measured here {payload['measured_at']}; the fastest that passed: {payload['measured_choice']}")
    for m in payload["measured"]:
        verdict = "ok" if m["passed"] else f"refused{': ' + m['error'] if m.get('error') else ''}"
        print(f"  {m['choice']:18s} {m['passages_per_second']:8.1f} passages/s   cosine min {m['min_cosine']:.5f}"
              f"  mean {m['mean_cosine']:.5f}   {verdict}")
    return EXIT_OK


def _print_items(payload: dict, as_json: bool) -> int:
    if as_json:
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


# -- eval -------------------------------------------------------------------------

EVAL_NOTES = """\
The dataset is indexed into its own folder (default indexes/eval/<name>),
never into your data folder; reruns reuse its cached vectors.
--ablation adds rows with dedup, the floor, recency, diversity (MMR)
and hybrid scoring each switched against the configured engine.
"""


@cli.group(
    "eval",
    short_help="Measure quality on labelled data, against TF-IDF and BM25 baselines in the same run.",
    help="Measure quality on labelled data, against TF-IDF and BM25 baselines in the same run.",
    epilog=_examples("""
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
    """),
    no_args_is_help=True,
)
@common_options
def evaluate_group() -> None:
    pass


def _eval_options(f: Callable) -> Callable:
    options = [
        click.option("--dataset", type=click.Path(path_type=Path), required=True, metavar="FILE",
                     help="JSONL articles (with `group` for related)"),
        click.option("--depth", type=click.IntRange(min=1), default=None,
                     help="rank depth (default 100, the most a widget may ask)"),
        click.option("--json", "as_json", is_flag=True, help="print only the JSON report"),
        click.option("--ablation", is_flag=True,
                     help="also rank with dedup, recency, diversity (MMR) and hybrid scoring each switched against "
                     "the settings"),
    ]
    for option in reversed(options):
        f = option(f)
    return common_options(f)


@evaluate_group.command(
    "related",
    short_help="Related lists: story MAP, MAP, dup@10, nDCG@10, P@5.",
    help="Related lists: every article with a `group` is a query; articles sharing its group are relevant. "
    "Lists are the served ones (k = 100, confidence floor included). Copies are found from the text alone "
    "(word 5-grams, see docs/evaluation.md): story map counts each copy cluster once, dup@10 is the share of "
    "lists showing one text twice. Also MAP, nDCG@10, P@5.\n\n" + EVAL_NOTES,
    epilog=_examples("""
        recommender eval related --dataset ../shared/data/bbc_news.jsonl
        recommender eval related --dataset ../shared/data/newswcl50.jsonl --ablation --lists lists.jsonl
    """),
)
@click.option("--lists", type=click.Path(path_type=Path), metavar="FILE",
              help="also write the engine's lists here (JSONL: id, items)")
@_eval_options
def cmd_eval_related(dataset: Path, depth: int | None, as_json: bool, ablation: bool, lists: Path | None) -> int:
    from recommender.evaluation import runs

    settings = _eval_settings(dataset)
    with progress_bar("eval", "step", enabled=not as_json) as on_progress:
        report = runs.evaluate_related(settings, dataset, depth=depth, on_progress=on_progress,
                                           ablation=ablation, lists_out=lists)
    return _print_report(runs, report, as_json)


@evaluate_group.command(
    "search",
    short_help="Search: MAP, nDCG@10, MRR, recall@100.",
    help="Search: each line of --queries has `query` and `relevant_ids` (and optionally `source_id`, left out "
    "of the ranking). Metrics: MAP, nDCG@10, MRR, recall@100.\n\n" + EVAL_NOTES,
    epilog=_examples("""
        recommender eval search --dataset ../shared/data/time_docs.jsonl \\
                                --queries ../shared/data/time_queries.jsonl --json
    """),
)
@click.option("--queries", type=click.Path(path_type=Path), required=True, metavar="FILE",
              help="JSONL queries: `query`, `relevant_ids`")
@_eval_options
def cmd_eval_search(dataset: Path, depth: int | None, as_json: bool, ablation: bool, queries: Path) -> int:
    from recommender.evaluation import runs

    settings = _eval_settings(dataset)
    with progress_bar("eval", "step", enabled=not as_json) as on_progress:
        report = runs.evaluate_search(settings, dataset, queries, depth=depth, on_progress=on_progress,
                                      ablation=ablation)
    return _print_report(runs, report, as_json)


def _eval_settings(dataset: Path) -> Settings:
    return _settings(data_dir=_common().get("data_dir") or Path("indexes/eval") / dataset.stem)


def _print_report(runs: Any, report: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(runs.format_table(report))
        print()
        print(json.dumps(report))
    return EXIT_OK


# -- serve ------------------------------------------------------------------------


@cli.command(
    "serve",
    short_help="Serve the JSON API, the embeddable widget and the editors' page over HTTP.",
    help="Serve the JSON API, the embeddable widget and the editors' page over HTTP.",
    epilog=_examples("""
        recommender serve                                  # http://127.0.0.1:8000/
        recommender serve --port 8080 --workers 2 --data-dir /srv/news
        RECOMMENDER_API_KEY=secret recommender serve       # enables PUT/DELETE/POST of articles
        RECOMMENDER_CORS_ORIGINS=https://news.example recommender serve

        curl 'http://127.0.0.1:8000/v1/articles/ID/related?k=5'
        curl 'http://127.0.0.1:8000/v1/search?q=harbour+bridge&section=local'
        curl -X PUT -H 'Authorization: Bearer secret' -H 'Content-Type: application/json' \\
             -d '{"title": "...", "body": "..."}' http://127.0.0.1:8000/v1/articles/ID
    """),
)
@click.option("--host", default=None, help="address to bind (default 127.0.0.1)")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="port (default 8000)")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="worker processes (default 1)")
@common_options
def cmd_serve(host: str | None, port: int | None, workers: int | None) -> int:
    import uvicorn

    from recommender.config import SETTINGS_JSON_ENV

    settings = _settings(host=host, port=port, workers=workers)
    verbose = _common().get("verbose", 0)
    # Worker processes read their settings from the environment: hand them ours, whole.
    os.environ[SETTINGS_JSON_ENV] = settings.model_dump_json()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from recommender import directory
    from recommender.api.metrics import metrics_root, prepare_multiprocess_dir

    directory.remove_leftovers(settings.data_dir, settings.index_root)  # what killed writers left behind
    # /metrics adds up all the workers' values, in files off the data folder: a full data disk cannot reach them.
    prepare_multiprocess_dir(metrics_root(settings.metrics_dir), legacy=settings.data_dir / "metrics")
    uvicorn.run(
        "recommender.api.app:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        # httptools with a header size limit and read deadlines (recommender/api/server.py)
        http="recommender.api.server:GuardedHttpToolsProtocol",
        timeout_keep_alive=settings.keep_alive_seconds,  # type: ignore[arg-type]  # a float works: call_later
        limit_concurrency=settings.limit_concurrency,
        # SIGTERM: requests in flight get half of shutdown_seconds, background work the other half (api/app.py)
        timeout_graceful_shutdown=max(1, round(settings.shutdown_seconds / 2)),
        log_level="info" if verbose else "warning",
        access_log=bool(verbose),
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
