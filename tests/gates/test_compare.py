"""The eval gate's rules (gates/compare.py) and its input files (gates/baseline_files.py), on the
seed's example baseline. Numbers are checked against values computed by hand (and against scipy
where it is installed: it is not a dependency of Gantry)."""
from __future__ import annotations

import copy
import json
import math
import re
from decimal import Decimal
from typing import Any

import pytest

from gates.baseline_files import (
    Baseline, BucketScore, Candidate, CompareInputError, as_json, loads, parse_baseline, parse_candidate,
)
from gates.compare import (
    FAIL, INCONCLUSIVE, MCNEMAR, PASS, TWO_PROPORTION, compare_buckets, mcnemar_exact_p, two_proportion_p,
    wilson_interval,
)

from tests.gates.seed_baseline import EVAL_SET_MD5 as HASH
from tests.gates.seed_baseline import SEED_BASELINE


def seed() -> dict[str, Any]:
    return loads(SEED_BASELINE)


def candidate_text(**changes: str) -> str:
    """The seed's scores as a candidate's file, with `bucket=accuracy` changes (`verb__go="0.70"`)."""
    text = "\n".join(line for line in SEED_BASELINE.splitlines() if "baseline_sha" not in line and "tolerance_pp" not in line)
    for name, accuracy in changes.items():
        text, found = re.subn(rf'("{re.escape(name.replace("__", "."))}":\s*{{"accuracy": )[0-9.]+', rf"\g<1>{accuracy}", text)
        assert found == 1, name
    return text


def candidate_doc(**changes: str) -> dict[str, Any]:
    return loads(candidate_text(**changes))


def compare(candidate: dict[str, Any], baseline: dict[str, Any] | None = None, **kwargs: Any):
    return compare_buckets(parse_baseline(baseline or seed()), parse_candidate(candidate), **kwargs)


def bucket(result, name: str):
    return next(b for b in result.buckets if b.bucket == name)


def items(bucket_name: str, n: int, right: set[int]) -> list[dict[str, Any]]:
    return [{"id": f"{bucket_name}-{i}", "bucket": bucket_name, "correct": i in right} for i in range(n)]


# --- statistics, against values computed by hand ---------------------------------------------------

def test_wilson_interval_of_81_in_100():
    low, high = wilson_interval(81, 100)
    assert low == pytest.approx(0.72221, abs=1e-5) and high == pytest.approx(0.87485, abs=1e-5)


def test_wilson_interval_at_zero_and_all():
    # At 0/n the upper bound is z²/(n + z²): 3.8415/13.8415 for n = 10.
    assert wilson_interval(0, 10) == (0.0, pytest.approx(3.841459 / 13.841459, abs=1e-6))
    assert wilson_interval(10, 10) == (pytest.approx(10 / 13.841459, abs=1e-6), 1.0)


def test_mcnemar_exact_p_by_hand():
    assert mcnemar_exact_p(8, 0) == 1 / 256  # 8 losses, no gain: ½⁸
    assert mcnemar_exact_p(5, 2) == pytest.approx((21 + 7 + 1) / 128)  # P(X ≥ 5), X ~ Bin(7, ½)
    assert mcnemar_exact_p(3, 3) == pytest.approx(42 / 64)  # (20 + 15 + 6 + 1) / 2⁶
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(0, 5) == 1.0


def test_two_proportion_p_by_hand():
    # 173/240 → 154/240: pooled 327/480, se = √(0.68125·0.31875·2/240) = 0.042539, z = 1.8610.
    assert two_proportion_p(173, 240, 154, 240) == pytest.approx(0.03137, abs=2e-5)
    assert two_proportion_p(154, 240, 173, 240) == pytest.approx(1 - 0.03137, abs=2e-5)  # a gain is no drop
    assert two_proportion_p(50, 100, 50, 100) == 0.5


@pytest.mark.parametrize("counts", [(0, 10, 0, 10), (10, 10, 10, 10), (60, 60, 400, 400)])
def test_two_proportion_p_is_one_when_both_sides_are_0_or_100_percent(counts):
    assert two_proportion_p(*counts) == 1.0


def test_statistics_agree_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(81, 100), (0, 60), (60, 60), (44, 60), (194, 240), (328, 400)]:
        ci = stats.binomtest(k, n).proportion_ci(method="wilson")
        assert wilson_interval(k, n) == (pytest.approx(ci.low, abs=1e-9), pytest.approx(ci.high, abs=1e-9))
    for b, c in [(8, 0), (50, 10), (6, 0), (12, 9), (30, 31)]:
        assert mcnemar_exact_p(b, c) == pytest.approx(stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue, rel=1e-9)
    for xb, nb, xc, nc in [(173, 240, 154, 240), (44, 60, 38, 60), (8, 10, 5, 10), (328, 400, 300, 400)]:
        # The pooled z-test squared is Pearson's χ² on the 2×2 table; one side holds half its p.
        chi2 = stats.chi2_contingency([[xb, nb - xb], [xc, nc - xc]], correction=False)
        assert two_proportion_p(xb, nb, xc, nc) == pytest.approx(chi2.pvalue / 2, rel=1e-9)


# --- the rules, on the seed's baseline -------------------------------------------------------------

def test_a_candidate_equal_to_the_seed_baseline_passes():
    result = compare(candidate_doc())
    assert result.verdict == PASS and result.exit_code == 0 and result.reasons == ()
    assert [b.bucket for b in result.buckets] == list(seed()["buckets"])
    assert all(b.outcome == PASS and b.test == TWO_PROPORTION and not b.warning for b in result.buckets)


def test_a_drop_of_exactly_the_tolerance_passes():
    result = compare(candidate_doc(tense__present_simple="0.79"))
    b = bucket(result, "tense.present_simple")
    assert (b.outcome, b.beyond_tolerance, b.delta_pp) == (PASS, False, Decimal("-2.00"))
    assert result.verdict == PASS


def test_a_drop_of_exactly_the_tolerance_passes_where_floats_would_fail_it():
    # In floats 0.18 < 0.2 − 0.02 (= 0.18000000000000002): the seed's rule needs exact decimals.
    assert 0.18 < 0.2 - 0.02
    base = loads('{"eval_set_dvc_hash": "h", "baseline_sha": "x", "tolerance_pp": 0.02, "buckets": {"hard": {"accuracy": 0.2, "n": 240}}}')
    for text in ('{"eval_set_dvc_hash": "h", "buckets": {"hard": {"accuracy": 0.18, "n": 240}}}',):
        for parsed in (loads(text), json.loads(text)):  # Decimals from the text, or floats from plain json
            assert compare(parsed, base).buckets[0].beyond_tolerance is False
    assert compare(loads('{"eval_set_dvc_hash": "h", "buckets": {"hard": {"accuracy": 0.1799, "n": 240}}}'), base).buckets[0].beyond_tolerance


def test_a_drop_of_exactly_the_tolerance_passes_from_python_floats_too():
    doc = json.loads(candidate_text(tense__present_simple="0.79"))
    assert isinstance(doc["buckets"]["tense.present_simple"]["accuracy"], float)
    assert bucket(compare(doc), "tense.present_simple").outcome == PASS


def test_a_hair_beyond_the_tolerance_is_inconclusive_at_240_items():
    b = bucket(compare(candidate_doc(tense__present_simple="0.7899")), "tense.present_simple")
    assert (b.outcome, b.beyond_tolerance, b.significant) == (INCONCLUSIVE, True, False)


def test_a_hair_beyond_the_tolerance_fails_when_the_bucket_is_large_enough_to_tell():
    big = {"eval_set_dvc_hash": HASH, "baseline_sha": "x", "tolerance_pp": Decimal("0.02"),
           "buckets": {"b": {"accuracy": Decimal("0.81"), "n": 100_000}}}
    result = compare({"eval_set_dvc_hash": HASH, "buckets": {"b": {"accuracy": Decimal("0.7899"), "n": 100_000}}}, big)
    assert (result.verdict, result.buckets[0].significant) == (FAIL, True)


def test_the_seeds_past_participle_regression_fails_even_with_a_gain_elsewhere():
    # The seed's own example: +2 pp on present simple, −8 pp on past participle (flat on average).
    result = compare(candidate_doc(tense__present_simple="0.83", tense__past_participle="0.64"))
    b = bucket(result, "tense.past_participle")
    assert (b.outcome, b.test) == (FAIL, TWO_PROPORTION)
    assert b.p_value == pytest.approx(two_proportion_p(173, 240, 154, 240))
    assert result.verdict == FAIL and result.exit_code == 1
    assert result.reasons == (f"tense.past_participle: {b.note}",) and "8 pp below" in b.note


def test_tiny_buckets_are_inconclusive_not_failed():
    result = compare(candidate_doc(verb__go="0.70"))  # −4 pp on 60 items
    b = bucket(result, "verb.go")
    assert (b.outcome, b.beyond_tolerance, b.significant) == (INCONCLUSIVE, True, False)
    assert (result.verdict, result.exit_code) == (INCONCLUSIVE, 3)
    tiny = {"eval_set_dvc_hash": HASH, "baseline_sha": "x", "tolerance_pp": 0.02, "buckets": {"t": {"accuracy": 0.8, "n": 10}}}
    assert compare({"eval_set_dvc_hash": HASH, "buckets": {"t": {"accuracy": 0.5, "n": 10}}}, tiny).verdict == INCONCLUSIVE


def test_a_failure_outranks_an_inconclusive_bucket():
    result = compare(candidate_doc(verb__go="0.70", tense__past_participle="0.64"))
    assert [b.outcome for b in result.buckets if b.outcome != PASS] == [FAIL, INCONCLUSIVE]
    assert result.verdict == FAIL and len(result.reasons) == 2


def test_a_bucket_missing_from_the_candidate_fails():
    doc = candidate_doc()
    del doc["buckets"]["verb.be"]
    result = compare(doc)
    b = bucket(result, "verb.be")
    assert (b.outcome, b.candidate) == (FAIL, None) and "missing" in b.note
    assert result.verdict == FAIL and sum(x.outcome == PASS for x in result.buckets) == 9


def test_a_bucket_scored_on_fewer_items_than_the_baseline_is_warned_about():
    doc = candidate_doc()
    doc["buckets"]["verb.go"]["n"] = 59
    b = bucket(compare(doc), "verb.go")
    assert b.outcome == PASS and "n is 59 here but 60 in the baseline" in b.warning


def test_an_extra_bucket_in_the_candidate_is_reported_not_failed():
    doc = candidate_doc()
    doc["buckets"]["verb.have"] = {"accuracy": Decimal("0.10"), "n": 50}
    result = compare(doc)
    assert result.verdict == PASS
    assert result.extra_buckets == {"verb.have": BucketScore(Decimal("0.10"), 50)}
    assert "verb.have" not in [b.bucket for b in result.buckets]


def test_another_eval_set_fails_before_any_bucket_is_compared():
    doc = candidate_doc()
    doc["eval_set_dvc_hash"] = "0" * 32
    result = compare(doc)
    assert result.verdict == FAIL and result.buckets == ()
    assert "another eval set" in result.reasons[0] and "0" * 32 in result.reasons[0]


def test_the_tolerance_can_be_overridden():
    result = compare(candidate_doc(verb__go="0.70"), tolerance=Decimal("0.05"))
    assert (result.verdict, result.tolerance_pp, result.tolerance_source) == (PASS, Decimal("0.05"), "override")
    with pytest.raises(CompareInputError, match="tolerance"):
        compare(candidate_doc(), tolerance=Decimal(2))


# --- per-item results: McNemar ---------------------------------------------------------------------

def paired(bucket_name: str, n: int, base_accuracy: str, cand_accuracy: str, base_right: set[int], cand_right: set[int]):
    base = {"eval_set_dvc_hash": HASH, "baseline_sha": "x", "tolerance_pp": Decimal("0.02"),
            "buckets": {bucket_name: {"accuracy": Decimal(base_accuracy), "n": n}}, "items": items(bucket_name, n, base_right)}
    cand = {"eval_set_dvc_hash": HASH, "buckets": {bucket_name: {"accuracy": Decimal(cand_accuracy), "n": n}},
            "items": items(bucket_name, n, cand_right)}
    return cand, base


def test_a_large_paired_regression_fails_by_mcnemar():
    # person.1sg: 328/400 → 288/400; 50 items lost, 10 gained.
    base_right = set(range(328))
    cand_right = (base_right - set(range(50))) | set(range(328, 338))
    b = compare(*paired("person.1sg", 400, "0.82", "0.72", base_right, cand_right)).buckets[0]
    assert (b.outcome, b.test, b.items.b, b.items.c) == (FAIL, MCNEMAR, 50, 10)
    assert b.p_value == pytest.approx(8.0819e-08, rel=1e-4)  # P(X ≥ 50), X ~ Bin(60, ½)


def test_pairing_tells_a_drop_the_accuracies_alone_cannot():
    # verb.go, 44/60 → 38/60: the models differ on 6 items only, all of them losses.
    base_right, cand_right = set(range(44)), set(range(6, 44))
    cand, base = paired("verb.go", 60, "0.74", "0.64", base_right, cand_right)
    with_items = compare(cand, base).buckets[0]
    assert (with_items.outcome, with_items.test, with_items.p_value) == (FAIL, MCNEMAR, 1 / 64)
    del cand["items"]
    without = compare(cand, base).buckets[0]
    assert (without.outcome, without.test) == (INCONCLUSIVE, TWO_PROPORTION)


def test_items_on_other_ids_fall_back_to_the_two_proportion_test():
    cand, base = paired("verb.go", 60, "0.74", "0.64", set(range(44)), set(range(6, 44)))
    for item in cand["items"]:
        item["id"] = "other-" + item["id"]
    assert compare(cand, base).buckets[0].test == TWO_PROPORTION


def test_a_significant_drop_within_the_tolerance_passes_with_a_warning():
    base_right = set(range(328))
    cand, base = paired("person.1sg", 400, "0.82", "0.80", base_right, base_right - set(range(8)))
    result = compare(cand, base)
    b = result.buckets[0]
    assert (b.outcome, b.beyond_tolerance, b.significant, b.p_value) == (PASS, False, True, 1 / 256)
    assert "significant drop within the tolerance" in b.warning and result.verdict == PASS


def test_the_candidates_wilson_interval_is_reported():
    b = bucket(compare(candidate_doc(tense__present_simple="0.79")), "tense.present_simple")
    assert b.candidate_ci == wilson_interval(round(Decimal("0.79") * 240), 240)  # 189.6 → 190
    assert b.baseline_ci == wilson_interval(194, 240)


# --- the result's hash ----------------------------------------------------------------------------

def test_the_result_hash_is_stable_across_key_order_and_number_spelling():
    first = compare(candidate_doc(verb__go="0.70"))
    text = SEED_BASELINE.replace('"accuracy": 0.81', '"accuracy": 0.810')
    reordered = dict(reversed(list(loads(text).items())))
    second = compare(candidate_doc(verb__go="0.700"), reordered)
    assert first.result_sha256 == second.result_sha256 and len(first.result_sha256) == 64
    # Pinned: a sign-off is bound to this value. Change it only with gates.compare.RULE_VERSION.
    assert first.result_sha256 == PINNED_SHA


PINNED_SHA = "90b8e0f2540b9c9e659d98f84778d97acd984138e347b15dd936ef7d86410102"


@pytest.mark.parametrize("change", [
    lambda c, b: c["buckets"]["verb.go"].update(accuracy=Decimal("0.69")),
    lambda c, b: b.update(baseline_sha="another"),
    lambda c, b: b.update(tolerance_pp=Decimal("0.03")),
    lambda c, b: c.update(items=items("verb.go", 60, set(range(42))) + [
        {"id": f"{k}-{i}", "bucket": k, "correct": i < round(s["accuracy"] * s["n"])}
        for k, s in c["buckets"].items() if k != "verb.go" for i in range(s["n"])]),
])
def test_the_result_hash_changes_with_any_input(change):
    cand, base = candidate_doc(verb__go="0.70"), seed()
    before = compare(copy.deepcopy(cand), copy.deepcopy(base)).result_sha256
    change(cand, base)
    assert compare(cand, base).result_sha256 != before


def test_the_result_hash_changes_with_a_tolerance_override():
    assert compare(candidate_doc()).result_sha256 != compare(candidate_doc(), tolerance=Decimal("0.02")).result_sha256


def test_the_json_form_holds_every_bucket():
    result = compare(candidate_doc(verb__go="0.70"))
    data = json.loads(json.dumps(result.as_json()))
    assert data["verdict"] == INCONCLUSIVE and data["exit_code"] == 3 and data["result_sha256"] == result.result_sha256
    assert [b["bucket"] for b in data["buckets"]] == list(seed()["buckets"])
    go = next(b for b in data["buckets"] if b["bucket"] == "verb.go")
    assert go["delta_pp"] == -4.0 and go["outcome"] == INCONCLUSIVE and math.isclose(go["p_value"], result.buckets[8].p_value)


# --- parsing ---------------------------------------------------------------------------------------

def test_the_seed_baseline_parses_to_exact_decimals():
    baseline = parse_baseline(seed())
    assert isinstance(baseline, Baseline) and baseline.tolerance_pp == Decimal("0.02")
    assert baseline.buckets["verb.go"] == BucketScore(Decimal("0.74"), 60) and len(baseline.buckets) == 10
    assert baseline.previous_baseline_sha is None and baseline.items is None
    assert parse_baseline(loads(json.dumps(as_json(baseline)))) == baseline


def test_a_candidate_with_items_round_trips():
    cand, _ = paired("verb.go", 60, "0.74", "0.64", set(), set(range(38)))
    parsed = parse_candidate(cand)
    assert isinstance(parsed, Candidate) and len(parsed.items) == 60
    assert parse_candidate(loads(json.dumps(as_json(parsed)))) == parsed


BAD_BASELINES = [
    (lambda d: d.pop("tolerance_pp"), "tolerance_pp", "missing"),
    (lambda d: d.update(tolerance=0.02), "tolerance", "not a key"),
    (lambda d: d.update(tolerance_pp=Decimal(2)), "tolerance_pp", "0.02"),
    (lambda d: d.update(tolerance_pp=Decimal(1)), "tolerance_pp", "[0, 1)"),
    (lambda d: d.update(tolerance_pp=Decimal("-0.01")), "tolerance_pp", "[0, 1)"),
    (lambda d: d.update(tolerance_pp="0.02"), "tolerance_pp", "number"),
    (lambda d: d.update(baseline_sha=""), "baseline_sha", "non-empty"),
    (lambda d: d.update(previous_baseline_sha=7), "previous_baseline_sha", "non-empty"),
    (lambda d: d.update(buckets={}), "buckets", "at least one"),
    (lambda d: d["buckets"]["verb.go"].update(accuracy=Decimal("1.5")), 'buckets["verb.go"].accuracy', "[0, 1]"),
    (lambda d: d["buckets"]["verb.go"].update(accuracy="0.74"), 'buckets["verb.go"].accuracy', "number"),
    (lambda d: d["buckets"]["verb.go"].update(n=0), 'buckets["verb.go"].n', "positive"),
    (lambda d: d["buckets"]["verb.go"].update(n=Decimal("2.5")), 'buckets["verb.go"].n', "positive"),
    (lambda d: d["buckets"]["verb.go"].update(n=True), 'buckets["verb.go"].n', "positive"),
    (lambda d: d["buckets"]["verb.go"].update(ci=[0, 1]), 'buckets["verb.go"].ci', "not a key"),
    (lambda d: d["buckets"]["verb.go"].pop("n"), 'buckets["verb.go"].n', "missing"),
]


@pytest.mark.parametrize("mutate, path, words", BAD_BASELINES)
def test_an_invalid_baseline_is_refused_naming_the_key(mutate, path, words):
    data = seed()
    mutate(data)
    with pytest.raises(CompareInputError) as caught:
        parse_baseline(data)
    assert caught.value.path == path and words in caught.value.message


def test_previous_baseline_sha_may_be_given_or_null():
    assert parse_baseline({**seed(), "previous_baseline_sha": "1a2b3c"}).previous_baseline_sha == "1a2b3c"
    assert parse_baseline({**seed(), "previous_baseline_sha": None}).previous_baseline_sha is None


def good_items() -> dict[str, Any]:
    cand, _ = paired("verb.go", 60, "0.74", "0.74", set(), set(range(44)))
    return cand


BAD_ITEMS = [
    (lambda d: d["items"][0].update(bucket="verb.do"), "items[0].bucket", "not one of"),
    (lambda d: d["items"][1].update(id=d["items"][0]["id"]), "items[1].id", "twice"),
    (lambda d: d["items"][0].update(id=True), "items[0].id", "string or an integer"),
    (lambda d: d["items"][0].update(correct=1), "items[0].correct", "true or false"),
    (lambda d: d["items"][0].update(score=1), "items[0].score", "not a key"),
    (lambda d: d["items"].pop(), "items", "59 items but its n is 60"),
    (lambda d: d["items"][50].update(correct=True), 'buckets["verb.go"].accuracy', "45/60"),
    (lambda d: d.update(items={}), "items", "list"),
]


@pytest.mark.parametrize("mutate, path, words", BAD_ITEMS)
def test_invalid_items_are_refused_naming_the_key(mutate, path, words):
    data = good_items()
    parse_candidate(data)  # valid before the change: the change alone is refused
    mutate(data)
    with pytest.raises(CompareInputError) as caught:
        parse_candidate(data)
    assert caught.value.path == path and words in caught.value.message


def test_the_accuracy_may_round_its_items_by_half_an_item_at_most():
    data = good_items()  # 44/60 = 0.7333…: 0.74 is 0.4 items off, 0.745 would be 0.7
    for accuracy, ok in [("0.7333", True), ("0.74", True), ("0.7416", True), ("0.7417", False), ("0.725", True), ("0.7249", False)]:
        data["buckets"]["verb.go"]["accuracy"] = Decimal(accuracy)
        if ok:
            parse_candidate(data)
        else:
            with pytest.raises(CompareInputError, match="disagree"):
                parse_candidate(data)


def test_a_candidate_refuses_the_baselines_keys():
    with pytest.raises(CompareInputError) as caught:
        parse_candidate({**candidate_doc(), "tolerance_pp": 0.02})
    assert caught.value.path == "tolerance_pp"


@pytest.mark.parametrize("text, words", [
    ("{", "not valid JSON"), ('{"n": NaN}', "NaN"), ('{"n": ' + "9" * 5000 + "}", "too long"), ("[1, 2]", None),
])
def test_text_that_is_not_a_document_is_refused(text, words):
    with pytest.raises(CompareInputError) as caught:
        parse_baseline(loads(text))
    if words:
        assert words in str(caught.value)
    else:
        assert "must be a JSON object" in caught.value.message
