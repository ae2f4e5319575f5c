"""Time build_keyword_models, the current code against an earlier revision's
(read from git), on the first N articles of a store, in one run; and the
upsert throughput of a fresh store with and without the FTS5 index and
triggers the store used to keep.

    python scripts/bench_keywords.py --store indexes/bench/store.sqlite --sizes 20000 100000
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recommender import lexical
from recommender.articles import parse_article
from recommender.embedders.machine import cpu_info  # noqa: E402
from recommender.store import SqliteStore

OLD_FTS = """
CREATE VIRTUAL TABLE articles_fts USING fts5(
    title, body, content='articles', content_rowid='doc_id', tokenize='porter unicode61 remove_diacritics 2');
CREATE TRIGGER articles_ai AFTER INSERT ON articles BEGIN
    INSERT INTO articles_fts(rowid, title, body) VALUES (new.doc_id, new.title, new.body);
END;
CREATE TRIGGER articles_ad AFTER DELETE ON articles BEGIN
    INSERT INTO articles_fts(articles_fts, rowid, title, body) VALUES ('delete', old.doc_id, old.title, old.body);
END;
CREATE TRIGGER articles_au AFTER UPDATE OF title, body ON articles BEGIN
    INSERT INTO articles_fts(articles_fts, rowid, title, body) VALUES ('delete', old.doc_id, old.title, old.body);
    INSERT INTO articles_fts(rowid, title, body) VALUES (new.doc_id, new.title, new.body);
END;
"""


def cpu() -> str:
    info = cpu_info()
    return f"{info['model']}, {info['cores']} cpus ({' '.join(info['flags'])})"


def old_lexical(revision: str):
    """recommender/lexical.py as it was at ``revision``, as a module of its own."""
    source = subprocess.run(["git", "show", f"{revision}:recommender/lexical.py"], check=True, capture_output=True,
                            text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_lexical.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("old_lexical", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_lexical"] = module
    spec.loader.exec_module(module)
    return module


def timed(build, titles, bodies) -> tuple[float, tuple]:
    gc.collect()
    start = time.perf_counter()
    models = build(titles, bodies)
    return time.perf_counter() - start, models


def upsert_seconds(articles, with_fts: bool) -> float:
    with tempfile.TemporaryDirectory() as folder, SqliteStore.open(Path(folder) / "s.sqlite") as store:
        if with_fts:
            store.connection.executescript(OLD_FTS)
        start = time.perf_counter()
        for i in range(0, len(articles), 500):  # batches, as ingest sends them
            store.upsert(articles[i : i + 500])
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("indexes/bench/store.sqlite"), help="read only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--baseline", default="00aa390", help="git revision of the old lexical.py")
    parser.add_argument("--upsert", type=int, default=5000, help="articles upserted into a fresh store (0: skip)")
    args = parser.parse_args()

    db = sqlite3.connect(f"file:{args.store}?mode=ro", uri=True)
    print("cpu:", cpu())
    old = old_lexical(args.baseline)
    results = {}
    for n in args.sizes:
        rows = db.execute("SELECT title, body FROM articles ORDER BY doc_id LIMIT ?", (n,)).fetchall()
        titles, bodies = [r[0] for r in rows], [r[1] for r in rows]
        before, old_models = timed(old.build_keyword_models, titles, bodies)
        del old_models
        after, new_models = timed(lexical.build_keyword_models, titles, bodies)
        results[f"build {len(rows)}"] = {"old s": round(before, 2), "new s": round(after, 2),
                                         "ratio": round(before / after, 2)}
        print(json.dumps(results[f"build {len(rows)}"]), f"({len(rows)} articles)", flush=True)
        del new_models
    if args.upsert:
        columns = "id, title, body, url, published, section, tags, lang, metadata"
        records = db.execute(f"SELECT {columns} FROM articles ORDER BY doc_id LIMIT ?", (args.upsert,)).fetchall()
        articles = [parse_article({"id": r[0], "title": r[1], "body": r[2], "url": r[3], "published": r[4],
                                   "section": r[5], "tags": json.loads(r[6]), "lang": r[7],
                                   "metadata": json.loads(r[8])}) for r in records]
        with_fts, without = upsert_seconds(articles, True), upsert_seconds(articles, False)
        results["upsert"] = {"articles": len(articles), "with FTS5 s": round(with_fts, 2),
                             "without s": round(without, 2), "ratio": round(with_fts / without, 2)}
        print(json.dumps(results["upsert"]))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
