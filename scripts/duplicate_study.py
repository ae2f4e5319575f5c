#!/usr/bin/env python
"""How often a related list holds two copies of one story.

    HF_HUB_OFFLINE=1 python scripts/duplicate_study.py --data ../shared/data [--out docs/duplicates.json]

From BBC News (2,127 articles) it copies every 20th article (5%) with light
edits, as a re-publication or a syndicated copy would have them: " (updated)"
added to the title, the last sentence dropped, one "said" changed to "told
reporters", and a closing line added. Everything is indexed with the default
settings (real MiniLM), then every article's related list (k = 10) is checked
with story dedup on (the default) and off:

* two copies: the list holds an original and its copy together;
* own copy: the list of an original holds its copy, or the other way round.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from recommender.config import Settings  # noqa: E402
from recommender.evaluate import eval_policy, load_dataset  # noqa: E402
from recommender.articles import Article  # noqa: E402


def lightly_edited(article: Article) -> Article:
    sentences = re.split(r"(?<=[.!?])\s+", article.body.strip())
    body = " ".join(sentences[:-1]) if len(sentences) > 3 else article.body
    body = body.replace(" said ", " told reporters ", 1) + "\n\nThis story has been updated."
    return Article(id=article.id + "-copy", title=article.title + " (updated)", body=body, url=None,
                   published=article.published, section=article.section, tags=article.tags, lang=article.lang)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--data-dir", type=Path, default=Path("indexes/study/duplicates"),
                        help="where the corpus is indexed (vectors are cached there for reruns)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from recommender.embed import SentenceTransformerEmbedder
    from recommender.pipeline import reindex
    from recommender.related import related_to_row
    from recommender.store import Store
    from recommender.version import IndexVersion

    articles, _ = load_dataset(args.data / "bbc_news.jsonl")
    copies = [lightly_edited(a) for a in articles[::20]]
    pair = {c.id: c.id.removesuffix("-copy") for c in copies}
    pair.update({v: k for k, v in list(pair.items())})
    settings = Settings.load({"data_dir": args.data_dir}, environ={})
    store = Store.open(settings.store_path)
    store.upsert(articles + copies)
    report = reindex(settings, store, lambda: SentenceTransformerEmbedder.from_settings(settings), progress=True)
    print(f"indexed {report.articles} articles; {report.passages_reused} passages reused", file=sys.stderr)
    version = IndexVersion.load(settings.index_root)
    id_of = {s.doc_id: s.article.id for s in store.iter_articles()}
    results = {}
    for label, dedup in (("dedup on (default)", True), ("dedup off", False)):
        variant = settings.replace(dedup=dedup)
        policy = eval_policy(version, variant)
        two_copies = own_copy = 0
        for row in range(len(version)):
            source = id_of[int(version.doc_ids[row])]
            shown = {id_of[h.doc_id] for h in related_to_row(version, row, args.k, variant, policy=policy)}
            two_copies += any(a in pair and pair[a] in shown for a in shown)
            own_copy += source in pair and pair[source] in shown
        lists = len(version)
        results[label] = {
            "lists": lists, "two_copies": two_copies, "two_copies_share": round(two_copies / lists, 4),
            "own_copy": own_copy, "own_copy_share_of_pair_lists": round(own_copy / (2 * len(copies)), 4),
        }
        print(f"  {label}: {results[label]}", file=sys.stderr, flush=True)
    print(f"{len(articles)} BBC articles + {len(copies)} lightly edited copies; related lists of k = {args.k}\n")
    print("| engine | lists | lists with two copies of one story | share | original/copy lists showing the other copy |")
    print("|---|---:|---:|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r['lists']} | {r['two_copies']} | {r['two_copies_share']:.2%} | "
              f"{r['own_copy']} of {2 * len(copies)} |")
    if args.out:
        args.out.write_text(json.dumps({"articles": len(articles), "copies": len(copies), "k": args.k,
                                        "results": results}, indent=2) + "\n")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
