"""The benchmark scripts' bookkeeping that committed results rest on (no models run)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
auto_bench = pytest.importorskip("auto_bench")


def _row(lean: float) -> dict:
    """A three-set OTBR row: averaged estimates (points) and measured DER per γ, chosen under ``lean``."""
    est = {0.1: 90.0, 0.15: 85.0, 0.2: 80.0}
    der = {0.1: 70.0, 0.15: 95.0, 0.2: 60.0}
    cands = [{"value": v, "estimated_der": est[v], "der": der[v]} for v in est]
    auto = auto_bench.pick(cands, 100 * lean)
    oracle = max(cands, key=lambda r: r["der"])
    return {"candidates": cands, "auto": auto, "oracle": oracle, "gap": round(oracle["der"] - auto["der"], 2),
            "lean": lean, "clean_scale": 0.7, "backdoor_term": "relative", "zoo": "main", "model": "m", "target": 1,
            "suspected_target": 1, "fixed": None, "select_s": 1.0, "repeat_agreement": 1.0, "repeats": [
                {"seed": 0, "suspect": 1, "chosen": 0.1, "estimated_der": {str(v): e for v, e in est.items()}}]}


def test_rescore_reapplies_a_changed_lean_to_averaged_rows_and_keeps_the_old_choice() -> None:
    row = _row(0.035)
    assert row["auto"]["value"] == 0.1 and row["gap"] == 25.0
    assert auto_bench.rescore(row, "otbr", lean=0.065)
    assert row["auto"]["value"] == 0.15 and row["gap"] == 0.0 and row["lean"] == 0.065 and row["rescored"]
    assert row["lean_history"] == [{"lean": 0.035, "value": 0.1, "der": 70.0, "gap": 25.0}]
    assert row["as_run"]["value"] == 0.1
    assert auto_bench.lone_gaps(row) == [0.0]  # each set's lone choice under the row's new lean
    assert not auto_bench.rescore(row, "otbr", lean=0.065)  # nothing left to change
    assert auto_bench.rescore(row, "otbr", lean=0.2) and row["auto"]["value"] == 0.2
    assert [h["lean"] for h in row["lean_history"]] == [0.035, 0.065] and row["as_run"]["value"] == 0.1


def test_rescore_leaves_tsbd_rows_with_repeats_alone() -> None:
    row = _row(0.0)
    assert not auto_bench.rescore(row, "tsbd", lean=0.065) and "lean_history" not in row


def test_summary_gives_the_gap_under_the_previous_lean() -> None:
    rows = [_row(0.035), _row(0.035)]
    assert "mean_gap_lean_0.035" not in auto_bench.summary(rows)[0]  # nothing re-scored yet
    for r in rows:
        auto_bench.rescore(r, "otbr", lean=0.065)
    first = auto_bench.summary(rows)[0]
    assert first["mean_gap_auto"] == 0.0
    assert first["mean_gap_lean_0.035"] == 25.0 and first["worst_gap_lean_0.035"] == 25.0


def test_collapse_guard_leaves_out_candidates_that_disagree_with_the_original_on_most_inversions() -> None:
    row = _row(0.0)  # chooses 0.1 (estimated 90) against the oracle 0.15: gap 25
    row["clean_term"] = "synthetic disagreement × 0.7"
    for r, dis in zip(row["candidates"], (80.0, 40.0, 95.0)):
        r["clean_disagreement_est"] = dis
    assert auto_bench.guarded_gap(row) == 0.0  # 0.1 collapsed: 0.15 (85) is the best left
    for r in row["candidates"]:
        r["clean_disagreement_est"] = 99.0
    assert auto_bench.guarded_gap(row) == 25.0  # all collapsed: the smallest γ
    assert auto_bench.summary([row])[0]["mean_gap_collapse_guard"] == 25.0
    row["clean_term"] = "measured clean drop"  # TSBD: no synthetic disagreement to guard on
    assert auto_bench.guarded_gap(row) is None and "mean_gap_collapse_guard" not in auto_bench.summary([row])[0]


def test_rows_run_with_the_guard_are_re_scored_with_it() -> None:
    """A row run with the selector's guard (``collapse_limit``, a share) keeps it in every re-scoring: the lean's
    re-application, the no-lean reading and each set's lone choice leave out the collapsed 0.1 as the selector
    did; the same row without ``collapse_limit`` (made before the guard) is re-scored without it."""
    row = _row(0.0)
    row["clean_term"] = "synthetic disagreement × 0.7"
    for r, dis in zip(row["candidates"], (80.0, 40.0, 95.0)):
        r["clean_disagreement_est"] = dis
    row["repeats"][0]["clean_disagreement"] = {str(r["value"]): r["clean_disagreement_est"] for r in row["candidates"]}
    bare = copy.deepcopy(row)
    row["collapse_limit"] = 0.7
    assert auto_bench.averaged_gap(row, 0.0) == 0.0 and auto_bench.averaged_gap(bare, 0.0) == 25.0
    assert auto_bench.lone_choices(row) == [0.15] and auto_bench.lone_choices(bare) == [0.1]
    assert auto_bench.rescore(row, "otbr", lean=0.001) and row["auto"]["value"] == 0.15
    assert auto_bench.guarded_gap(row) == row["gap"] == 0.0  # the guard column repeats the as-run guard


def test_repair_bench_applies_the_collapse_guard_to_the_stored_estimates(tmp_path, monkeypatch) -> None:
    """The repair starts from OTBR's no-lean choice with the guard: 0.1 (estimated 90, disagreement 80 %) is left out
    and 0.15 taken; ``collapse_limit=None`` (and ``auto_gammas``, as the explore scripts ran) reads the row as is."""
    import json

    repair_bench = pytest.importorskip("repair_bench")
    row = _row(0.065)
    for r, dis in zip(row["candidates"], (80.0, 40.0, 95.0)):
        r["clean_disagreement_est"] = dis
    (tmp_path / "three.json").write_text(json.dumps({"models": [row]}))
    monkeypatch.setattr(repair_bench, "RESULTS", tmp_path)
    monkeypatch.setattr(repair_bench, "AUTO_FILES", ("three.json",))
    assert repair_bench.auto_choices()[("main", "m")] == (0.15, 1, "three.json")
    assert repair_bench.auto_choices(collapse_limit=None)[("main", "m")][0] == 0.1
    assert repair_bench.auto_gammas()[("main", "m")] == (0.1, 1)


def test_repair_grid_scores_the_capped_automatic_start_against_every_start(tmp_path, monkeypatch) -> None:
    """The automatic start is min(the no-lean choice, the cap): this row's selection takes 0.15, so the repair's
    automatic start is 0.05, scored against the best of the five starts (0.1 here: gap 2); a model missing a start is
    listed as incomplete, not read; the fused grid's oracle is the stored row's."""
    import json

    repair_bench = pytest.importorskip("repair_bench")
    grid = pytest.importorskip("repair_grid")
    row = _row(0.065)
    for r in row["candidates"]:
        r["clean_disagreement_est"] = 10.0
    (tmp_path / "sel.json").write_text(json.dumps({"models": [row, {**row, "model": "n"}]}))
    ders = dict(zip((0.02, 0.05, 0.1, 0.15, 0.2), (80.0, 93.0, 95.0, 90.0, 85.0), strict=True))
    rows = [{"zoo": "main", "model": "m", "series": "repair", "gamma": g, "der": d, "acc": 80.0, "asr": 0.0,
             "target": 1} for g, d in ders.items()]
    rows += [{"zoo": "main", "model": "n", "series": "repair", "gamma": 0.05, "der": 90.0, "acc": 80.0, "asr": 0.0}]
    (tmp_path / "run.json").write_text(json.dumps({"rows": rows}))
    (tmp_path / f"{grid.STORED}.json").write_text(json.dumps({"rows": [{**rows[1], "der": 92.5}]}))
    for mod in (repair_bench, grid):
        monkeypatch.setattr(mod, "RESULTS", tmp_path)
    monkeypatch.setattr(grid, "AUTO_FILES", ("sel.json",))
    assert grid.main(["--runs", "run", "--out", "out"]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    (r,) = out["rows"]
    assert (r["auto_start"], r["oracle_start"], r["gap"], r["stored_auto_der"]) == (0.05, 0.1, 2.0, 92.5)
    assert r["fused_oracle"] == 0.15 and r["gap_to_fused_oracle"] == 2.0  # the stored row's oracle: DER 95
    assert out["summary"][0]["goal_met"] is False and out["incomplete"] == ["main:n (0.05)"]  # mean gap 2 > 1
    with pytest.raises(SystemExit):
        grid.main(["--runs", "missing"])


def test_guard_check_sets_a_guarded_run_beside_the_guards_re_scoring() -> None:
    """guard_check: the reference row (run without the guard) predicts 0.15 once 0.1 (80 % disagreement) is left
    out; a guarded run that chose 0.15 agrees, one that chose 0.2 does not; the estimates' move is reported."""
    guard_check = pytest.importorskip("guard_check")
    ref = _row(0.0)
    ref["clean_term"] = "synthetic disagreement × 0.7"
    for r, dis in zip(ref["candidates"], (80.0, 40.0, 95.0)):
        r["clean_disagreement_est"] = dis
    run = copy.deepcopy(ref)
    run.update(collapse_limit=0.7, collapse_guard={"left_out": [0.1, 0.2]}, auto=run["candidates"][1], gap=0.0)
    run["candidates"][2]["estimated_der"] += 3.0
    row = guard_check.compare(run, ref)
    assert (row["gamma_run"], row["gamma_predicted"], row["same_choice"]) == (0.15, 0.15, True)
    assert row["left_out_predicted"] == row["left_out_run"] == "0.1, 0.2" and row["max_estimate_move"] == 3.0
    assert (row["gap_run"], row["gap_predicted"], row["gap_unguarded_ref"]) == (0.0, 0.0, 25.0)
    run["auto"] = run["candidates"][2]
    assert guard_check.compare(run, ref)["same_choice"] is False


def test_summary_splits_the_gaps_by_the_weak_suspect_warning() -> None:
    """Rows whose first-set probe reaches below SUSPECT_WEAK_RATE on the original count as flagged; the flagged and
    unflagged gaps are reported apart; rows whose probe ran on real images (TSBD) get no such columns."""
    from otbr.selection import SUSPECT_WEAK_RATE

    weak, calm = _row(0.035), _row(0.065)  # gaps 25 and 0
    weak["suspected_target"] = 6
    weak["probe"] = {"sources": "synthetic", "rate_original": SUSPECT_WEAK_RATE - 0.01}
    calm["probe"] = {"sources": "synthetic", "rate_original": 1.0}
    first = auto_bench.summary([weak, calm])[0]
    assert (first["weak_suspect"], first["weak_suspect_wrong"]) == (1, 1)
    assert (first["mean_gap_weak"], first["mean_gap_not_weak"]) == (25.0, 0.0)
    assert first["oracle_asr_over_10"] == 0  # the rows store no ASR
    for r in weak["candidates"]:
        r["asr"] = 40.0  # even the oracle's γ leaves 40 %
    assert auto_bench.oracle_asr(weak) == 40.0 and auto_bench.summary([weak, calm])[0]["oracle_asr_over_10"] == 1
    calm["probe"]["sources"] = "given images"
    assert "weak_suspect" not in auto_bench.summary([weak, calm])[0]


def test_weak_suspect_hedge_takes_the_largest_lone_choice_only_when_flagged() -> None:
    from otbr.selection import SUSPECT_WEAK_RATE

    row = _row(0.035)  # averaged choice 0.1 (gap 25); the one set's estimates choose 0.1 under lean 0.035
    row["repeats"][0]["estimated_der"] = {"0.1": 80.0, "0.15": 90.0, "0.2": 70.0}  # that set alone: 0.15
    row["probe"] = {"sources": "synthetic", "rate_original": 1.0}
    assert auto_bench.lone_choices(row) == [0.15] and auto_bench.hedged_gap(row) == 25.0  # not flagged
    row["probe"]["rate_original"] = SUSPECT_WEAK_RATE - 0.01
    assert auto_bench.hedged_gap(row) == 0.0  # flagged: max(0.1, 0.15) = 0.15, the oracle
    assert auto_bench.summary([row])[0]["mean_gap_weak_hedge"] == 0.0
    row["probe"]["sources"] = "given images"
    assert auto_bench.hedged_gap(row) is None
    assert auto_bench.right_suspect_gaps(row) == [0.0]  # the one set suspected the target (1) and chose 0.15
    row["repeats"][0]["suspect"] = 6
    assert auto_bench.right_suspect_gaps(row) == []


def test_repair_bench_reads_the_three_set_file_for_models_the_single_set_file_lacks(tmp_path, monkeypatch) -> None:
    import json

    repair_bench = pytest.importorskip("repair_bench")
    single = {"zoo": "main", "model": "a", "suspected_target": 0, "auto": {"value": 0.2},
              "before_lean": {"value": 0.1}}
    averaged = _row(0.065)  # averaged estimates: 0.1 best with no lean, 0.15 with the lean
    averaged["model"] = "b"
    twice = {**_row(0.065), "model": "a"}  # also in the single-set file: that one wins
    (tmp_path / "one.json").write_text(json.dumps({"models": [single]}))
    (tmp_path / "three.json").write_text(json.dumps({"models": [averaged, twice]}))
    monkeypatch.setattr(repair_bench, "RESULTS", tmp_path)
    monkeypatch.setattr(repair_bench, "AUTO_FILES", ("one.json", "three.json"))
    assert repair_bench.auto_choices() == {("main", "a"): (0.1, 0, "one.json"), ("main", "b"): (0.1, 1, "three.json")}
    assert repair_bench.auto_choices("lean")[("main", "b")] == (0.15, 1, "three.json")
    assert repair_bench.auto_gammas()[("main", "a")] == (0.1, 0)
    assert repair_bench.auto_choices(files=("three.json", "one.json"))[("main", "a")] == (0.1, 1, "three.json")


def test_auto_bench_merge_keeps_a_models_row_from_the_last_part(tmp_path, monkeypatch) -> None:
    """``--merge A,B``: a model in both parts keeps B's row, in A's order; models only in one part stay."""
    import json

    first, second, other = _row(0.065), {**_row(0.065), "gap": 0.5, "suspect_rule": "stratified"}, _row(0.065)
    other["model"] = "n"
    part = {"method": "otbr", "eval_limit": 5000, "command": "c", "threads": 1}
    (tmp_path / "a.json").write_text(json.dumps({**part, "models": [first, other]}))
    (tmp_path / "b.json").write_text(json.dumps({**part, "models": [second]}))
    monkeypatch.setattr(auto_bench, "RESULTS", tmp_path)
    monkeypatch.setattr(auto_bench, "write_markdown", lambda payload, path: None)  # test rows lack the table's cells
    assert auto_bench.main(["--merge", "a,b", "--out", "ab"]) == 0
    rows = json.loads((tmp_path / "ab.json").read_text())["models"]
    assert [(r["model"], r["gap"], r.get("suspect_rule")) for r in rows] == [("m", 0.5, "stratified"),
                                                                             ("n", first["gap"], None)]


def test_gate_probe_scores_point_toward_the_suspect_and_auroc_reads_them_that_way() -> None:
    """The gate probe's scores rise with "answer the suspect" (low top probability; high suspect probability), and
    its AUROC is 1 for a perfect split, 0 for the reverse and ½ for ties: the committed file's reading rests on it."""
    import torch

    gate = pytest.importorskip("repair_gate_explore")
    sure, unsure = torch.tensor([[8.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.9, 0.8]])
    assert gate.scores(unsure, 1)["conf"] > gate.scores(sure, 1)["conf"]
    assert gate.scores(torch.tensor([[0.0, 5.0, 0.0]]), 1)["guard"] > gate.scores(sure, 1)["guard"]
    hi, lo = torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.2, 0.3])
    assert gate.auroc(hi, lo) == 1.0 and gate.auroc(lo, hi) == 0.0 and gate.auroc(lo, lo) == 0.5
    assert gate.auroc(hi, lo[:0]) is None


def test_shipped_split_groups_models_by_what_the_oracle_could_do() -> None:
    """The split counts a model as removable when the oracle's ASR is ≤ 10 %, leaves collapsed oracles (ACC < 20 %)
    out of the usable group, and refuses rows with no stored synthetic disagreement (it could not apply the guard)."""
    split = pytest.importorskip("shipped_split")

    def row(gap: float, oracle_asr: float, oracle_acc: float, auto_asr: float) -> dict:
        return {"gap": gap, "gap_no_guard": gap, "oracle_asr": oracle_asr, "oracle_acc": oracle_acc,
                "auto_asr": auto_asr, "auto": 0.1, "oracle": 0.1 if gap == 0 else 0.2, "zoo": "main"}

    g = {r["group"].split(" (")[0]: r for r in split.groups(
        [row(0.0, 1.0, 80.0, 1.0), row(11.0, 2.0, 11.0, 99.0), row(4.0, 99.0, 85.0, 98.0)])}
    assert g["all"]["n"] == 3 and g["all"]["worst_gap"] == 11.0 and g["all"]["auto_removes"] == 1
    assert g["some γ removes the backdoor"]["n"] == 2 and g["some γ removes the backdoor"]["mean_gap"] == 5.5
    assert g["… and the oracle's model is not collapsed"]["n"] == 1
    assert g["no γ removes it"]["worst_gap"] == 4.0 and g["no γ removes it"]["auto_is_oracle"] == 0
    assert "held out from the shipped rule" not in g  # no held-out zoo among these rows
    m = _row(0.065)
    m.update(clean_term="synthetic disagreement")
    with pytest.raises(ValueError, match="no stored synthetic disagreement"):
        split.shipped_rows([m])


def test_the_family_table_re_picks_every_row_under_each_limit_and_lean() -> None:
    """Each (limit, lean) cell re-makes the choice from the stored estimates: a lean of 5 points moves this row from
    γ 0.1 to 0.15 (gap 25 → 0), a limit that leaves 0.15 out keeps 0.1, and only the shipped pair is marked."""
    split = pytest.importorskip("shipped_split")
    m = _row(0.065)
    for c, dis in zip(m["candidates"], (10.0, 50.0, 90.0), strict=True):
        c["clean_disagreement_est"] = dis
    cells = {(r["collapse_limit"], r["lean"]): r for r in split.family([m], limits=(40.0, 70.0, None),
                                                                       leans=(0.0, 5.0, 6.5))}
    assert cells[("none", 0.0)]["mean_gap"] == 25.0 and cells[("none", 5.0)]["mean_gap"] == 0.0
    assert cells[(40.0, 5.0)]["mean_gap"] == 25.0 and cells[(70.0, 5.0)]["auto_is_oracle"] == 1
    assert [k for k, r in cells.items() if r["shipped"]] == [(70.0, 6.5)]


def test_the_wide_family_contains_the_shipped_rule_and_counts_the_rules_meeting_the_goal() -> None:
    """The shipped member of the wider family re-makes the shipped choice (gap 0 on this row, whose 0.15 the lean
    reaches), a rule with no lean misses it by 25 points, so some rules meet the goal and some do not; re-weighting
    the clean term moves the estimate by (scale − 0.7) / 2 × the disagreement, exactly."""
    split = pytest.importorskip("shipped_split")
    m = _row(0.065)
    for c, dis, drop in zip(m["candidates"], (10.0, 20.0, 30.0), (90.0, 99.5, 100.0), strict=True):
        c.update(clean_disagreement_est=dis, backdoor_drop_est=drop)
    assert split.wide_pick(m, 0.7, 6.5, 70.0, None, None)["value"] == 0.15
    assert split.wide_pick(m, 0.7, 0.0, 70.0, None, None)["value"] == 0.1
    assert split.wide_pick(m, 0.7, 6.5, 70.0, None, 99.0)["value"] == 0.15  # saturation stops at 0.15's 99.5
    assert split.wide_pick(m, 0.7, 13.0, 70.0, None, 95.0)["value"] == 0.15  # not at the reachable 0.2
    assert split.wide_pick(m, 1.7, 0.0, 70.0, None, None)["value"] == 0.1  # 90 − 5 = 85 vs 85 − 10 = 75
    assert split.wide_pick(m, 0.7, 6.5, 15.0, None, None)["value"] == 0.1  # the limit keeps 0.1 alone
    w = split.wide_family([m])
    assert w["shipped_mean"] == 0.0 and w["rules"] == 8640 and 0 < w["meeting_goal"] < w["rules"]
    assert w["best_mean"] == 0.0 and w["best_worst"] == 0.0


def test_the_deployable_reading_leaves_out_candidates_below_half_the_original_accuracy() -> None:
    """The second reading's oracle skips a candidate at 44 % of a 90 % original (below half) and takes one at exactly
    half; a choice it leaves out scores a negative gap; with no candidate kept the full oracle stands."""
    split = pytest.importorskip("shipped_split")
    m = {"original": {"acc": 90.0}, "oracle": {"value": 0.2, "der": 80.0},
         "candidates": [{"value": 0.02, "acc": 88.0, "der": 50.0}, {"value": 0.1, "acc": 45.0, "der": 60.0},
                        {"value": 0.2, "acc": 44.0, "der": 80.0}]}
    assert split.deployable_gap(m, 50.0) == {"deployable_oracle": 0.1, "gap_deployable": 10.0}
    assert split.deployable_gap(m, 80.0)["gap_deployable"] == -20.0
    assert split.deployable_gap(m, 50.0, share=0.99) == {"deployable_oracle": 0.2, "gap_deployable": 30.0}


def test_a_named_group_of_zoos_is_summarised_only_when_the_file_holds_all_of_them() -> None:
    """"held out … (ninth to eleventh)" must not appear for a file with only the ninth and tenth zoos (it would
    label eight models as twelve's group); "all" takes whatever two or more zoos the file holds."""
    rows = []
    for zoo in ("ninth", "tenth"):
        r = _row(0.065)
        r["zoo"] = zoo
        rows.append(r)
    labels = [g["models"] for g in auto_bench.summary(rows)]
    assert "held out from the shipped OTBR rule (ninth + tenth)" in labels and "all" in labels
    assert not any("ninth to eleventh" in label for label in labels)
    rows.append({**copy.deepcopy(rows[0]), "zoo": "eleventh"})
    assert any("ninth to eleventh" in g["models"] for g in auto_bench.summary(rows))


def test_damage_control_drops_are_zero_for_an_unchanged_candidate_and_none_for_unfollowed_classes() -> None:
    """The control probe measures each class's trigger on the candidates against the original: a candidate that is
    the original itself drops nothing, and a class whose trigger the original does not follow gets no drop."""
    import torch

    dc = pytest.importorskip("damage_control_explore")
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 3)
    with torch.no_grad():  # class 2 answers a bright top-left patch: a planted backdoor the probe must find
        lin.weight.normal_(0, 0.1)
        lin.bias.zero_()
        lin.weight[2] = 0.0
        lin.weight[2, :16] = 8.0
        lin.bias[2] = -40.0
    net = torch.nn.Sequential(torch.nn.Flatten(), lin).eval()
    x = torch.rand(48, 1, 8, 8) * 0.3
    drops = dc.class_drops(net, {0.1: net}, x, net(x).argmax(1), 3)
    assert drops[2] == {0.1: 0.0}  # followed on the original, unchanged on the candidate
    assert all(d is None or d == {0.1: 0.0} for d in drops.values())
    dead = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    with torch.no_grad():
        dead[1].weight.zero_()
        dead[1].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))  # answers 0 whatever the input: no trigger reaches 1 or 2
    none = dc.class_drops(dead, {0.1: dead}, x, torch.ones(48, dtype=torch.long), 3)
    assert none[1] is None and none[2] is None


def test_probe_payload_records_the_command_and_the_oracle_note() -> None:
    """A probe's result names the command that made it and carries the ORACLE note; ``--merge`` joins parts."""
    import argparse
    import json

    cli = pytest.importorskip("explore_cli")
    p = cli.probe_payload("x.py", ["--models", "main:badnets"], argparse.Namespace(merge=None, threads=2),
                          [{"model": "badnets"}], 500)
    assert p["command"] == "python benchmarks/x.py --models main:badnets"
    assert p["eval_limit"] == 500 and p["threads"] == 2 and p["oracle_note"].startswith("ORACLE")
    stored = json.loads((Path(cli.__file__).parent / "results" / "repair-gate-explore-fmnist.json").read_text())
    joined = cli.probe_payload("x.py", [], argparse.Namespace(merge="repair-gate-explore-fmnist", threads=1), [], 1)
    assert joined["models"] == stored["models"] and joined["command"] == stored["command"]


def test_run_models_saves_each_model_and_a_merge_takes_the_first_parts_settings(tmp_path: Path) -> None:
    """The scan probes' shared ``main``: one row per ``--models`` spec with the run's settings; ``--merge`` joins
    the parts' rows, takes the stored settings over the command line's defaults and keeps the first reading."""
    import json

    cli = pytest.importorskip("explore_cli")

    def run(argv: list[str]) -> dict:
        ap = cli.parser("doc")
        ap.add_argument("--size", type=float, default=1.0)
        assert cli.run_models(ap, argv, "probe", "p.py", lambda p, path: path.write_text(str(len(p["models"]))),
                              lambda args, zoo, name: {"zoo": zoo, "model": name, "size": args.size},
                              lambda args, rows: {"threads": args.threads, "size": args.size, "n": len(rows)},
                              results=tmp_path) == 0
        return json.loads((tmp_path / f"{argv[argv.index('--out') + 1]}.json").read_text())

    a = run(["--models", "main:badnets,main:sig", "--size", "2", "--out", "a"])
    assert [r["model"] for r in a["models"]] == ["badnets", "sig"] and a["size"] == 2.0 and a["n"] == 2
    assert a["command"] == "python benchmarks/p.py --models main:badnets,main:sig --size 2 --out a"
    assert (tmp_path / "a.md").read_text() == "2"
    run(["--models", "fifth:lf-t2", "--size", "2", "--out", "b"])
    (tmp_path / "a.json").write_text(json.dumps({**a, "reading": "kept"}))
    joined = run(["--merge", "a,b", "--out", "ab"])
    assert [r["model"] for r in joined["models"]] == ["badnets", "sig", "lf-t2"]
    assert joined["size"] == 2.0 and joined["reading"] == "kept" and joined["command"].count(", then ") == 1


def test_the_check_rescoring_gives_back_the_stored_flags_and_a_margin_flips_to_the_pruned_model() -> None:
    """At the shipped margin the re-scoring must agree with every stored check (else it is not the check); a margin
    that flags returns the stored pruned model's row, a reverted repair stays as it was run."""
    rescore = pytest.importorskip("repair_check_rescore")
    rows = rescore.model_rows(rescore.FILES.split(","))
    assert rows and all(rescore.flags(r["check"], r["check"].get("margin", rescore.AS_RUN_DEFAULT))
                        == r["check"]["flagged"] for r in rows)
    from otbr.repair import EASY_MARGIN

    assert EASY_MARGIN == rescore.PRE_REGISTERED  # the adopted default is the margin the fifteenth zoo tested
    check = {"tolerance": 0.25, "suspect": [1], "rate_original": [0.34, 0.0], "rate_before": [0.0, 0.0],
             "rate_after": [0.53, 0.0]}
    row = {"check": check, "reverted": False, "repair": {"der": 40.0}, "prune": {"der": 76.0}}
    assert rescore.outcome(row, 0.25) is row["repair"] and rescore.outcome(row, 0.15) is row["prune"]
    assert rescore.outcome({**row, "reverted": True}, 0.15) is row["repair"]


def test_the_removal_record_quoted_by_the_report_is_the_committed_count() -> None:
    """The report's removal note quotes REMOVAL_RECORD; it must be the committed split's count over the first thirteen
    zoos (the models seen when the reading was written)."""
    import json

    from otbr.selection import REMOVAL_RECORD

    split = pytest.importorskip("shipped_split")
    stored = json.loads((split.RESULTS / "auto-otbr-shipped-split-fmnist.json").read_text())["removal"]
    seen = {r["reading"].split(":")[0]: (r["removed"], r["models"]) for r in stored if "first thirteen" in r["group"]}
    assert {"above" if "≥" in k else "below": v for k, v in seen.items()} == REMOVAL_RECORD


def test_the_clean_estimate_error_quoted_by_the_cli_is_the_committed_measurement() -> None:
    """``otbr defend otbr`` quotes CLEAN_ESTIMATE_ERROR beside its estimate; it must be what the committed split
    measured, and TSBD (a measured clean term) gets no such line."""
    import json

    from cli.cmd_defend import clean_cost_line
    from otbr.selection import CLEAN_ESTIMATE_ERROR

    split = pytest.importorskip("shipped_split")
    stored = json.loads((split.RESULTS / "auto-otbr-shipped-split-fmnist.json").read_text())["clean_estimate"]
    assert {"median": stored["median_abs_error"], "p90": stored["p90_abs_error"]} == CLEAN_ESTIMATE_ERROR
    assert clean_cost_line({"clean_term": "measured clean drop", "chosen": 0.1,
                            "candidates": [{"value": 0.1, "clean_drop": 0.05}]}) is None
