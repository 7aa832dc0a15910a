"""Eval sets: rows validated line by line; the content hash is DVC's (both modes, on real files, the
expected values computed by DVC's own code); .dvc files read; uploads stored once, read-only, by md5."""
from __future__ import annotations

import hashlib
import json
import stat

import pytest

from dashboard.models import ApiToken, AuditEntry
from gates import evalsets
from gates.dvc_hash import DvcFileError, dvc_md5, hash_from_dvc_file, hash_from_dvc_text
from gates.evalsets import EvalSetError, parse_rows
from gates.models import EvalSet

CRLF_SET = b'{"id": 1}\r\n{"id": 2}\r\n'
# What DVC itself records for these bytes, taken from dvc-data 0.51.0 (DVC 2.58: file_md5) and
# dvc-data 3.18.3 (DVC 3: file_md5, and "md5-dos2unix" for legacy files), which agree here.
DVC_CASES = {
    # name: (bytes, DVC 3 md5, DVC 2 md5)
    "lf": (b'{"id": 1}\n{"id": 2}\n', "fa2bf6c26d0f3092e8bccc9bbfc6b9a5", "fa2bf6c26d0f3092e8bccc9bbfc6b9a5"),
    "crlf": (CRLF_SET, "e5d6bfc5f2d2f0b902bc6310cf19822d", "fa2bf6c26d0f3092e8bccc9bbfc6b9a5"),
    # NUL in the first 512 bytes: binary, so DVC 2 leaves its CRLF alone too.
    "binary": (b"\x00\x01\r\n\x02", "6720b275f6f2a44f409818703ba5b554", "6720b275f6f2a44f409818703ba5b554"),
    # More than 30 % of the first block outside printable ASCII: DVC 2 calls it binary.
    "accents": (("é" * 200 + "\r\n").encode(), "9c29a5e88173abb2b9b93ce79c5095f2", "9c29a5e88173abb2b9b93ce79c5095f2"),
    # A CRLF split by DVC's 1 MiB read stays CRLF; the one after it becomes LF.
    "chunk-boundary": (b"a" * (2**20 - 1) + b"\r\n" + b"b\r\n", "e0bc301cdd0940f2de68d786f8e52418", "deb8178cc400550795d42d701b97846d"),
    "empty": (b"", "d41d8cd98f00b204e9800998ecf8427e", "d41d8cd98f00b204e9800998ecf8427e"),
}


def row(**fields) -> dict:
    base = {"id": "r1", "buckets": ["tense.past_simple"], "prompt": "He ___ (go) home.", "expected": "went"}
    return {k: v for k, v in {**base, **fields}.items() if v is not ...}


def jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


# --- rows ---------------------------------------------------------------------------------------
def test_valid_rows_parse_with_their_bucket_counts():
    data = jsonl(
        row(id="a", buckets=["tense.past_simple", "verb.go"]),
        row(id="b", prompt=..., messages=[{"role": "user", "content": "Fix: he goed"}], expected="he went", match="contains"),
        "",  # blank lines are allowed (a trailing newline, a separator)
        row(id=3, expected=r"^went\.?$", match="regex"),
    )
    parsed = parse_rows(data)
    assert [r.id for r in parsed.rows] == ["a", "b", 3]
    assert parsed.bucket_counts == {"tense.past_simple": 3, "verb.go": 1}
    assert parsed.rows[1].messages == ({"role": "user", "content": "Fix: he goed"},)


@pytest.mark.parametrize("bad, words", [
    (row(id=...), "id must be"),
    (row(id=True), "id must be"),
    (row(id=" "), "id must be"),
    (row(buckets=[]), "buckets must be a non-empty list"),
    (row(buckets="verb.go"), "buckets must be a non-empty list"),
    (row(buckets=["verb.go", 3]), "every bucket must be a non-empty string"),
    (row(buckets=["verb.go", "verb.go"]), "same bucket twice"),
    (row(prompt=...), "exactly one of messages"),
    (row(messages=[{"role": "user", "content": "x"}]), "exactly one of messages"),
    (row(prompt=..., messages=[{"role": "robot", "content": "x"}]), "messages[0] must be"),
    (row(prompt=..., messages=[]), "messages must be a non-empty list"),
    (row(expected=...), "expected must be a string"),
    (row(expected=7), "expected must be a string"),
    (row(match="fuzzy"), "match must be one of exact, contains, regex"),
    (row(match="regex", expected="(unclosed"), "not a regular expression"),
    (row(expect="went"), 'unknown key "expect"'),
    ([1, 2], "a row must be a JSON object"),
    ('{"id": "r1", ', "not JSON"),
])
def test_each_bad_row_is_refused_naming_its_line(bad, words):
    data = jsonl(row(id="ok"), bad)
    with pytest.raises(EvalSetError) as caught:
        parse_rows(data)
    assert caught.value.status in (400, 422)
    assert len(caught.value.errors) == 1
    assert caught.value.errors[0].startswith("line 2: ")
    assert words in caught.value.errors[0]


def test_a_repeated_id_names_both_lines_and_every_problem_is_listed():
    data = jsonl(row(id="a"), row(id="b"), row(id="a"), row(id="c", match="nope"))
    with pytest.raises(EvalSetError) as caught:
        parse_rows(data)
    assert caught.value.errors == [
        'line 3: id "a" is already used on line 1',
        "line 4: match must be one of exact, contains, regex, not \"nope\"",
    ]


def test_not_utf8_and_empty_sets_are_refused():
    with pytest.raises(EvalSetError, match="line 2: not UTF-8"):
        parse_rows(jsonl(row(id="a")) + b'{"id": "\xff"}\n')
    with pytest.raises(EvalSetError, match="no rows"):
        parse_rows(b"\n\n")


def test_a_raw_line_separator_inside_a_string_does_not_split_a_row():
    # U+2028 is legal unescaped in JSON; str.splitlines() would cut the row in two.
    data = ('{"id": "a", "buckets": ["b"], "prompt": "one\u2028two", "expected": "x"}\n').encode()
    assert parse_rows(data).rows[0].prompt == "one\u2028two"


@pytest.mark.parametrize("match, expected, answer, correct", [
    ("exact", "Went", "  went \n", True),
    ("exact", "went", "he went", False),
    ("contains", "WENT", "He went home.", True),
    ("contains", "gone", "He went home.", False),
    ("regex", r"^went\.?$", " went. ", True),
    ("regex", r"^went$", "went home", False),
])
def test_answers_are_graded_by_the_rows_match(match, expected, answer, correct):
    parsed = parse_rows(jsonl(row(match=match, expected=expected)))
    assert parsed.rows[0].is_correct(answer) is correct


# --- DVC's md5 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(DVC_CASES))
def test_the_md5_is_the_one_dvc_records_in_both_modes(tmp_path, case):
    data, dvc3, dvc2 = DVC_CASES[case]
    path = tmp_path / f"{case}.jsonl"
    path.write_bytes(data)
    assert dvc_md5(path) == dvc3
    assert dvc_md5(path, legacy=True) == dvc2


def test_a_crlf_file_has_two_md5s_and_lf_has_one(tmp_path):
    crlf, lf = tmp_path / "crlf.jsonl", tmp_path / "lf.jsonl"
    crlf.write_bytes(CRLF_SET)
    lf.write_bytes(CRLF_SET.replace(b"\r\n", b"\n"))
    assert dvc_md5(crlf) == hashlib.md5(CRLF_SET).hexdigest()
    assert dvc_md5(crlf) != dvc_md5(crlf, legacy=True) == dvc_md5(lf) == dvc_md5(lf, legacy=True)


def write_dvc(path, md5: str, *, dvc3: bool) -> None:
    hash_line = "  hash: md5\n" if dvc3 else ""
    path.write_text(f"outs:\n- md5: {md5}\n  size: 22\n{hash_line}  path: phase-20.jsonl\n")


def test_a_dvc_file_gives_its_md5_and_whether_it_is_dvc_2(tmp_path):
    write_dvc(tmp_path / "v3.dvc", DVC_CASES["crlf"][1], dvc3=True)
    write_dvc(tmp_path / "v2.dvc", DVC_CASES["crlf"][2], dvc3=False)
    assert hash_from_dvc_file(tmp_path / "v3.dvc") == (DVC_CASES["crlf"][1], False)
    assert hash_from_dvc_file(tmp_path / "v2.dvc") == (DVC_CASES["crlf"][2], True)
    data = tmp_path / "phase-20.jsonl"
    data.write_bytes(CRLF_SET)
    for name in ("v3.dvc", "v2.dvc"):  # each file's md5 is this file's, hashed in that file's mode
        md5, legacy = hash_from_dvc_file(tmp_path / name)
        assert dvc_md5(data, legacy=legacy) == md5


@pytest.mark.parametrize("text, words", [
    ("outs: []\n", "exactly one entry"),
    ("outs:\n- md5: abc\n  path: x\n", "32 hexadecimal"),
    ("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: data\n", "directory"),
    ("outs:\n- md5: 0123456789abcdef0123456789abcdef\n  hash: sha256\n  path: x\n", "Gantry compares md5"),
    ("outs: [\n", "not a .dvc file"),
    ("a: &x [1]\nb: *x\n", "not a .dvc file"),
])
def test_a_dvc_file_it_cannot_use_is_refused_saying_why(text, words):
    with pytest.raises(DvcFileError, match=words):
        hash_from_dvc_text(text)


# --- storage ------------------------------------------------------------------------------------
@pytest.fixture
def var_dir(settings, tmp_path):
    settings.VAR_DIR = tmp_path / "var"
    return settings.VAR_DIR


@pytest.mark.django_db
def test_an_upload_is_stored_by_md5_read_only_and_audited(var_dir, alice):
    data = jsonl(row(id="a"), row(id="b", buckets=["verb.go"])).replace(b"\n", b"\r\n")
    eval_set, created = evalsets.upload("phase-20", data, alice)
    assert created
    stored = var_dir / "evalsets" / f"{hashlib.md5(data).hexdigest()}.jsonl"
    assert stored.read_bytes() == data
    assert stat.S_IMODE(stored.stat().st_mode) == 0o444
    row_in_db = EvalSet.objects.get()
    assert (row_in_db.md5, row_in_db.legacy_md5) == (hashlib.md5(data).hexdigest(), hashlib.md5(data.replace(b"\r\n", b"\n")).hexdigest())
    assert (row_in_db.rows, row_in_db.buckets, row_in_db.uploaded_by_name) == (2, {"tense.past_simple": 1, "verb.go": 1}, "alice")
    assert EvalSet.objects.with_dvc_hash(row_in_db.legacy_md5).get() == eval_set
    assert AuditEntry.objects.filter(action="evalset.upload", actor=alice).count() == 1
    assert evalsets.read_rows(eval_set).bucket_counts == {"tense.past_simple": 1, "verb.go": 1}


@pytest.mark.django_db
def test_the_same_upload_twice_is_one_row_and_rows_are_never_edited(var_dir, alice):
    data = jsonl(row())
    first, _ = evalsets.upload("phase-20", data, alice)
    again, created = evalsets.upload("phase-20", data, alice)
    assert (again, created) == (first, False)
    assert EvalSet.objects.count() == 1
    first.rows = 99
    with pytest.raises(ValueError, match="append-only"):
        first.save()
    with pytest.raises(ValueError, match="append-only"):
        first.delete()


@pytest.mark.django_db
def test_an_upload_checked_against_the_wrong_dvc_file_stores_nothing(var_dir, alice):
    dvc3_of_lf = DVC_CASES["lf"][1]  # the LF file's md5, in DVC 3's mode: not this CRLF upload
    with pytest.raises(EvalSetError) as caught:
        evalsets.upload("phase-20", CRLF_SET.replace(b"}", b', "buckets": ["b"], "prompt": "p", "expected": "e"}'), alice,
                        dvc_file=f"outs:\n- md5: {dvc3_of_lf}\n  hash: md5\n  path: x.jsonl\n")
    assert caught.value.field == "dvc_file" and "it is not the eval set" in caught.value.message
    assert not EvalSet.objects.exists()
    assert not (var_dir / "evalsets").exists() or not any((var_dir / "evalsets").iterdir())


@pytest.mark.django_db
def test_an_upload_matching_its_dvc_2_file_is_accepted(var_dir, alice):
    data = jsonl(row(id="a"), row(id="b")).replace(b"\n", b"\r\n")
    dvc2 = hashlib.md5(data.replace(b"\r\n", b"\n")).hexdigest()
    eval_set, created = evalsets.upload("phase-20", data, alice, dvc_file=f"outs:\n- md5: {dvc2}\n  size: 1\n  path: x.jsonl\n")
    assert created and eval_set.legacy_md5 == dvc2


# --- page and API -------------------------------------------------------------------------------
API = "/api/v2/gates/evalsets"


@pytest.mark.django_db
def test_the_api_uploads_a_jsonl_body_and_lists_it(client, var_dir, alice):
    _, raw = ApiToken.issue(alice, "ci")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    data = jsonl(row(id="a"), row(id="b", buckets=["verb.go"]))
    response = client.post(f"{API}?name=phase-20", data=data, content_type="application/x-ndjson", **auth)
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["md5"], body["rows"], body["buckets"], body["created"]) == (hashlib.md5(data).hexdigest(), 2, {"tense.past_simple": 1, "verb.go": 1}, True)
    assert client.post(f"{API}?name=phase-20", data=data, content_type="application/x-ndjson", **auth).status_code == 200
    listed = client.get(API, **auth).json()["items"]
    assert [e["name"] for e in listed] == ["phase-20"]


@pytest.mark.django_db
def test_the_api_refuses_bad_rows_listing_every_line(client, var_dir, alice):
    _, raw = ApiToken.issue(alice, "ci")
    data = jsonl(row(id="a"), row(id="a"), row(id="b", match="fuzzy"))
    response = client.post(f"{API}?name=phase-20", data=data, content_type="application/x-ndjson", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_rows", "file")
    assert [p.split(":")[0] for p in error["problems"]] == ["line 2", "line 3"]
    assert not EvalSet.objects.exists()


@pytest.mark.django_db
def test_the_api_needs_a_name_and_a_login(client, var_dir, alice):
    assert client.post(f"{API}?name=phase-20", data=jsonl(row()), content_type="application/x-ndjson").status_code == 401
    client.force_login(alice)
    response = client.post(API, data=jsonl(row()), content_type="application/x-ndjson")
    assert response.status_code == 422 and response.json()["error"]["field"] == "name"


@pytest.mark.django_db
def test_the_page_uploads_a_set_and_shows_bad_lines_beside_the_field(alice_client, var_dir):
    from django.core.files.uploadedfile import SimpleUploadedFile

    bad = SimpleUploadedFile("phase-20.jsonl", jsonl(row(id="a"), row(id="a")))
    response = alice_client.post("/gates/evalsets/", {"name": "phase-20", "file": bad})
    assert response.status_code == 422
    assert 'line 2: id &quot;a&quot; is already used on line 1' in response.content.decode()
    good = SimpleUploadedFile("phase-20.jsonl", jsonl(row(id="a"), row(id="b")))
    response = alice_client.post("/gates/evalsets/", {"name": "phase-20", "file": good})
    assert response.status_code == 303
    page = alice_client.get("/gates/evalsets/").content.decode()
    assert EvalSet.objects.get().md5 in page
