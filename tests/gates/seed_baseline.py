"""The seed's example eval_baseline.json (shared/seeds/001), its ten buckets as written there, for
every test that needs it. The seed's two placeholders ("..." and "<previous_promoted_canonical_sha>")
are replaced by values of the shape they stand for: an md5 and a short commit sha."""
EVAL_SET_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
BASELINE_SHA = "5f3e2a1"

SEED_BASELINE = """{
  "eval_set_dvc_hash": "d41d8cd98f00b204e9800998ecf8427e",
  "baseline_sha": "5f3e2a1",
  "tolerance_pp": 0.02,
  "buckets": {
    "tense.present_simple": {"accuracy": 0.81, "n": 240},
    "tense.past_simple":    {"accuracy": 0.77, "n": 240},
    "tense.past_participle":{"accuracy": 0.72, "n": 240},
    "tense.simple_future":  {"accuracy": 0.78, "n": 240},
    "tense.infinitive":     {"accuracy": 0.88, "n": 240},
    "person.1sg":           {"accuracy": 0.82, "n": 400},
    "person.2sg":           {"accuracy": 0.79, "n": 400},
    "person.3sg":           {"accuracy": 0.71, "n": 400},
    "verb.go":              {"accuracy": 0.74, "n":  60},
    "verb.be":              {"accuracy": 0.69, "n":  60}
  }
}"""
