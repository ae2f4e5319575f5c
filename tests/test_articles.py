from __future__ import annotations

import json

import pytest

from recommender.articles import Article, Rejected, parse_article, read_articles
from tests.helpers import write_jsonl


def test_parse_keeps_optional_and_unknown_fields():
    a = parse_article({
        "id": 42, "title": " T ", "body": "Body text.", "category": "world", "tags": ["a", "b", "a"],
        "published": "2024-05-31", "lang": "en", "url": "https://x.example/a", "outlet": "Ledger",
    })
    assert a.id == "42" and a.title == "T" and a.section == "world"
    assert a.tags == ("a", "b") and a.published == "2024-05-31" and a.lang == "en"
    assert a.metadata == {"outlet": "Ledger"}


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"title": "t", "body": "b"}, "missing field 'id'"),
        ({"id": "1", "title": "t"}, "missing field 'body'"),
        ({"id": "1", "title": "t", "body": "   "}, "'body' is empty"),
        ({"id": "1", "title": 3, "body": "b"}, "'title' must be a string"),
        ({"id": "1", "title": "t", "body": "b", "published": "31/05/2024"}, "not an ISO date"),
        ({"id": "1", "title": "t", "body": "b", "tags": [1, 2]}, "'tags' must be a list"),
        (["not", "an", "object"], "expected an object"),
    ],
)
def test_parse_rejects_with_a_reason(record, reason):
    with pytest.raises(ValueError, match=reason):
        parse_article(record)


def test_content_hash_tracks_text_only():
    a = parse_article({"id": "1", "title": "t", "body": "b"})
    b = parse_article({"id": "1", "title": "t", "body": "b", "section": "x"})
    c = parse_article({"id": "1", "title": "t", "body": "b!"})
    assert a.content_hash == b.content_hash != c.content_hash
    assert a.record_hash != b.record_hash


def test_jsonl_bad_lines_are_reported_and_good_lines_kept(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(
        json.dumps({"id": "a", "title": "A", "body": "one"}) + "\n"
        + "{not json\n"
        + "\n"
        + json.dumps({"id": "b", "title": "B"}) + "\n"
        + json.dumps({"id": "c", "title": "C", "body": "three"}) + "\n",
        encoding="utf-8",
    )
    out = list(read_articles(path))
    assert [x.id for x in out if isinstance(x, Article)] == ["a", "c"]
    rejected = [x for x in out if isinstance(x, Rejected)]
    assert [(r.line, r.reason.split(":")[0]) for r in rejected] == [(2, "invalid JSON"), (4, "missing field 'body'")]


def test_csv_with_tags_quoted_newlines_and_a_bad_row(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(
        'id,title,body,tags,published\n'
        '1,First,"Line one.\nLine two.",politics|world,2024-01-02\n'
        '2,Second,,x,2024-01-03\n'
        '3,Third,Body three,"a,b",2024-13-40\n'
        '4,Fourth,Body four,,\n',
        encoding="utf-8",
    )
    out = list(read_articles(path))
    good = [x for x in out if isinstance(x, Article)]
    assert [a.id for a in good] == ["1", "4"]
    assert good[0].tags == ("politics", "world") and "Line two." in good[0].body
    assert [(r.line, r.reason) for r in out if isinstance(r, Rejected)] == [
        (4, "missing field 'body'"),
        (5, "'published' is not an ISO date: '2024-13-40'"),
    ]


def test_csv_without_required_columns(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,text\n1,hello\n", encoding="utf-8")
    (rejected,) = list(read_articles(path))
    assert isinstance(rejected, Rejected) and "lacks column 'title', 'body'" in rejected.reason


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        list(read_articles(write_jsonl(tmp_path / "x.xml", [])))


def test_language_is_detected_when_missing_and_kept_when_given():
    english = parse_article({"id": "e", "title": "Talks resume", "body": "The ministers said the talks would resume next week in Geneva after the summer."})
    german = parse_article({"id": "g", "title": "Gespräche", "body": "Die Minister sagten, die Verhandlungen würden nächste Woche in Genf fortgesetzt."})
    given = parse_article({"id": "x", "title": "t", "body": "The ministers said the talks would resume.", "lang": "fr"})
    short = parse_article({"id": "s", "title": "t", "body": "ok"})
    assert (english.lang, german.lang, given.lang, short.lang) == ("en", "de", "fr", None)
