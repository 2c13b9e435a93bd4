"""Automatic γ / n: the estimate, the probes, and proof that no poisoned data or trigger reaches the choice."""

from __future__ import annotations

import ast
import copy
import inspect
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import CLASSES, SIDE, tiny_net, trigger
from helpers import tiny_files as make_tiny_files
from torch import nn

import otbr.scans as scans
import otbr.selection as selection
from otbr.attacks.base import Attack
from otbr.defenses.otbr import OTBR
from otbr.defenses.tsbd import TSBD
from otbr.errors import OtbrError
from otbr.models import Normalized
from otbr.scans import trigger_rate
from otbr.selection import (
    COLLAPSE_LIMIT,
    PROBE_MIN_RATE,
    SIGNAL,
    SIGNAL_PROBE,
    SUSPECT_WEAK_RATE,
    SYNTHETIC_CLEAN_SCALE,
    Choice,
    choose,
    choose_for,
    choose_for_repeats,
    class_agreement,
    probe_drops,
    suspect_class,
)
from otbr.synthesis import synthesize


# -- the estimate ------------------------------------------------------------------------------------------------
def test_class_agreement_hand_values() -> None:
    ref = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 0, 1, 0, 2])
    got = class_agreement(pred, ref, 4)
    assert got[:3].tolist() == pytest.approx([2 / 3, 1 / 2, 1.0]) and torch.isnan(got[3])


def test_choose_estimated_der_formula_and_tie_break() -> None:
    ref = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    cands = {
        0.1: torch.tensor([0, 0, 0, 0, 1, 1, 2, 2]),  # nothing changes
        0.2: torch.tensor([1, 1, 0, 0, 1, 1, 2, 2]),  # half of class 0 lost, others kept
        0.3: torch.tensor([1, 1, 1, 1, 1, 0, 2, 2]),  # all of class 0 lost, 1 of 4 others lost
    }
    c = choose(cands, ref, 3, clean_scale=1.0)
    assert c.suspect == 0 == suspect_class(cands, ref, 3)
    est = {r["value"]: r["estimated_der"] for r in c.candidates}
    assert est[0.1] == pytest.approx(0.5)
    assert est[0.2] == pytest.approx((1 + 0.5 - 0.0) / 2)
    assert est[0.3] == pytest.approx((1 + 1.0 - 0.25) / 2)
    assert c.value == 0.3
    # given terms override the synthetic ones; equal estimates go to the smaller setting
    c2 = choose(cands, ref, 3, clean_drop={0.1: 0.0, 0.2: 0.0, 0.3: 0.0},
                backdoor_drop={0.1: 0.4, 0.2: 0.4, 0.3: 0.4}, suspect=1)
    assert c2.value == 0.1 and c2.suspect == 1
    assert all(r["estimated_der"] == pytest.approx(0.7) for r in c2.candidates)


def test_synthetic_clean_term_is_scaled_and_a_measured_one_is_not() -> None:
    ref = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    # 0.1 keeps everything; 0.2 loses class 0 and every other input too
    cands = {0.1: ref.clone(), 0.2: torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])}
    default = choose(cands, ref, 3, suspect=0)
    row = default.candidates[1]
    assert SYNTHETIC_CLEAN_SCALE == 0.7
    assert row["clean_disagreement"] == pytest.approx(1.0)
    assert row["clean_drop"] == pytest.approx(0.7)
    assert row["estimated_der"] == pytest.approx((1 + 1.0 - 0.7) / 2)
    assert default.extra["clean_term"] == "synthetic disagreement × 0.7"
    # the scale decides: unscaled, 0.2 ties 0.1 at 0.5 and the weaker setting wins
    assert default.value == 0.2 and choose(cands, ref, 3, suspect=0, clean_scale=1.0).value == 0.1
    measured = choose(cands, ref, 3, suspect=0, clean_drop={0.1: 0.0, 0.2: 0.5})
    assert measured.candidates[1]["clean_drop"] == pytest.approx(0.5)
    assert measured.extra["clean_term"] == "measured clean drop"
    with pytest.raises(ValueError, match="clean_scale"):
        choose(cands, ref, 3, clean_scale=0.0)


def test_otbr_clean_scale_option_is_validated_keyed_and_the_cli_default() -> None:
    from cli.cmd_defend import defend_otbr

    assert OTBR(input_shape=(1, 8, 8)).config()["clean_scale"] == SYNTHETIC_CLEAN_SCALE
    assert OTBR(input_shape=(1, 8, 8), clean_scale=1.0).config()["clean_scale"] == 1.0
    with pytest.raises(OtbrError, match="clean_scale"):
        OTBR(input_shape=(1, 8, 8), clean_scale=0.0)
    assert next(p for p in defend_otbr.params if p.name == "clean_scale").default == SYNTHETIC_CLEAN_SCALE


def test_lean_takes_the_most_pruning_within_it_of_the_best() -> None:
    """With ``lean`` the largest setting whose estimate is within it of the best wins (not one just outside it);
    the report names the best estimate and says the choice moved; OTBR and its CLI default to OTBR_LEAN."""
    from cli.cmd_defend import defend_otbr
    from otbr.selection import OTBR_LEAN

    ref = torch.tensor([0, 1])
    cands = {0.1: ref.clone(), 0.2: ref.clone(), 0.3: ref.clone()}
    kw = {"clean_drop": {0.1: 0, 0.2: 0, 0.3: 0}, "backdoor_drop": {0.1: 0.9, 0.2: 0.86, 0.3: 0.82}}  # DER .95 .93 .91
    assert choose(cands, ref, 2, **kw).value == 0.1
    leaned = choose(cands, ref, 2, lean=0.03, **kw)
    assert leaned.value == 0.2 and leaned.extra["lean"] == {"within": 0.03, "best_estimate": 0.1, "moved": True}
    assert choose(cands, ref, 2, lean=0.05, **kw).value == 0.3
    assert choose(cands, ref, 2, lean=0.05, **kw).extra["margin"] == pytest.approx(0.02)  # still the best's lead
    with pytest.raises(ValueError, match="lean"):
        choose(cands, ref, 2, lean=-0.1, **kw)
    assert OTBR(input_shape=(1, 8, 8)).config()["lean"] is None  # the default: OTBR_LEAN, 0 with the repair
    assert OTBR(input_shape=(1, 8, 8)).effective_lean() == OTBR_LEAN == 0.065
    assert OTBR(input_shape=(1, 8, 8)).config()["lean_used"] == OTBR_LEAN  # in reports and compare's cell keys
    assert "lean_used" not in OTBR(input_shape=(1, 8, 8), gamma=0.1).config()  # no choice, no lean
    assert OTBR(input_shape=(1, 8, 8), repair_steps=5).effective_lean() == 0.0
    assert OTBR(input_shape=(1, 8, 8), repair_steps=5, lean=0.02).effective_lean() == 0.02
    assert next(p for p in defend_otbr.params if p.name == "lean").default is None
    with pytest.raises(OtbrError, match="lean"):
        OTBR(input_shape=(1, 8, 8), lean=2.0)


def test_margin_is_the_lead_over_the_runner_up() -> None:
    ref = torch.tensor([0, 1])
    c = choose({0.1: ref.clone(), 0.2: ref.clone(), 0.3: ref.clone()}, ref, 2, clean_drop={0.1: 0, 0.2: 0, 0.3: 0},
               backdoor_drop={0.1: 0.2, 0.2: 0.9, 0.3: 0.5})
    assert c.value == 0.2 and c.extra["margin"] == pytest.approx((1.9 - 1.5) / 2)
    assert choose({0.1: ref.clone()}, ref, 2).extra["margin"] is None


def test_probe_drops_are_relative_to_the_original() -> None:
    assert probe_drops(0.25, {0.05: 0.25, 0.1: 0.125, 0.2: 0.0}) == {0.05: 0.0, 0.1: 0.5, 0.2: 1.0}
    assert probe_drops(1.0, {0.1: 0.4})[0.1] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="positive"):
        probe_drops(0.0, {0.1: 0.0})


def test_trigger_rate_top_k_counts_the_target_among_the_highest_logits() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(torch.tensor([3.0, 2.0, 1.0]))  # every input ranks the classes 0 > 1 > 2
    x, m, p = torch.rand(5, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    assert [trigger_rate(net, x, m, p, 1, top=k) for k in (1, 2)] == [0.0, 1.0]
    assert [trigger_rate(net, x, m, p, 2, top=k) for k in (2, 3)] == [0.0, 1.0]
    assert trigger_rate(net, x, m, p, 0) == 1.0
    with pytest.raises(ValueError, match="top"):
        trigger_rate(net, x, m, p, 0, top=0)


def _rates(monkeypatch, original: nn.Module, on_original: float, on_candidates: float) -> None:
    """Make the probe's success rate a given value on the original and another on every candidate."""
    monkeypatch.setattr(selection, "trigger_rate", lambda model, *a, **k: on_original if model is original
                        else on_candidates)


def test_choose_for_uses_the_relative_probe_drop(backdoored, monkeypatch) -> None:
    net = backdoored[0]
    _rates(monkeypatch, net, 0.4, 0.1)
    syn = torch.rand(40, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    c = choose_for(net, {0.1: copy.deepcopy(net)}, syn, CLASSES, probe_steps=2)
    assert c.extra["probe"]["found"] is True and c.signal == SIGNAL_PROBE
    assert c.candidates[0]["backdoor_drop"] == pytest.approx(0.75)  # 1 − 0.1 / 0.4, not 0.4 − 0.1


def test_a_weak_probe_toward_the_suspect_is_flagged_in_the_report_only(backdoored, monkeypatch) -> None:
    """A probe the original follows on fewer than SUSPECT_WEAK_RATE of the synthetic sources raises the weak-suspect
    warning; the choice itself does not read it. Probes on given (real) images are not judged by it."""
    net = backdoored[0]
    syn = torch.rand(40, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    choices = {}
    for on_original in (SUSPECT_WEAK_RATE - 0.05, SUSPECT_WEAK_RATE + 0.05):
        _rates(monkeypatch, net, on_original, 0.0)
        choices[on_original] = choose_for(net, {0.1: copy.deepcopy(net)}, syn, CLASSES, probe_steps=2)
    weak, strong = (choices[k] for k in sorted(choices))
    assert weak.extra["suspect_check"]["weak"] is True
    assert f"{SUSPECT_WEAK_RATE - 0.05:.0%}" in weak.extra["suspect_check"]["note"]
    assert strong.extra["suspect_check"]["weak"] is False and "note" not in strong.extra["suspect_check"]
    # both probes vanish on the candidate (relative drop 1): the warning does not change the estimate
    assert weak.candidates[0]["estimated_der"] == strong.candidates[0]["estimated_der"]
    given = choose_for(net, {0.1: copy.deepcopy(net)}, syn, CLASSES, probe_steps=2, probe_images=syn)
    assert "suspect_check" not in given.extra


def test_choose_for_says_when_the_probe_found_nothing(backdoored, monkeypatch) -> None:
    """A probe the original barely follows cannot rank candidates: the agreement term is used and the report
    says so."""
    net = backdoored[0]
    _rates(monkeypatch, net, PROBE_MIN_RATE / 2, 0.0)
    syn = torch.rand(40, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    c = choose_for(net, {0.1: copy.deepcopy(net)}, syn, CLASSES, probe_steps=2)
    probe = c.extra["probe"]
    assert probe["found"] is False and "found no trigger" in probe["note"] and c.signal == SIGNAL
    # the candidate is a copy of the original: it agrees everywhere, so the agreement term says no drop at all
    assert c.candidates[0]["backdoor_drop"] == pytest.approx(0.0)


def test_repeats_average_the_sets_at_one_suspect_and_keep_each_sets_lone_choice(monkeypatch) -> None:
    """Three synthetic sets: the first alone suspects class 1 and would take γ 0.1, the other two suspect class 0
    and take 0.2. The averaged scan suspects 0; every set's probe toward 0 gives its estimate, the estimates are
    averaged (spread kept) and the choice is 0.2, with 2 of 3 sets agreeing. One set is plain choose_for."""
    net = tiny_net().eval()
    c1, c2 = copy.deepcopy(net), copy.deepcopy(net)
    scans = {0: [0.6, 1.0, 0.0], 1: [1.0, 0.3, 0.0], 2: [1.0, 0.3, 0.0]}
    monkeypatch.setattr(selection, "target_scan", lambda *a, seed=0, **k: torch.tensor(scans[seed] + [0.0] * (
        CLASSES - 3), dtype=torch.float64))
    monkeypatch.setattr(selection, "reverse_trigger", lambda *a, **k: (torch.zeros(1, 1, SIDE, SIDE),) * 2)

    def rate(model, images, mask, pattern, target, *, seed=12345, top=1, **k) -> float:
        if model is net:
            return 1.0
        if target == 0:  # c1 keeps half the probe (set 0) or a fifth of it (sets 1, 2); c2 none
            return (0.5 if seed == 12345 else 0.2) if model is c1 else 0.0
        return 0.0 if model is c1 else 1.0

    monkeypatch.setattr(selection, "trigger_rate", rate)
    sets = [torch.rand(30, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    c = choose_for_repeats(net, {0.1: c1, 0.2: c2}, sets, CLASSES, probe_steps=1)
    assert c.suspect == 0 and c.value == 0.2
    assert [(r["suspect"], r["chosen"]) for r in c.extra["repeats"]] == [(1, 0.1), (0, 0.2), (0, 0.2)]
    assert c.extra["repeat_agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert c.extra["suspect_check"] == {"probe_rate_original": 1.0, "weak_below": SUSPECT_WEAK_RATE, "weak": False}
    row = {r["value"]: r for r in c.candidates}
    # copies agree everywhere: no clean drop; backdoor drop of c1 toward 0 is 0.5, 0.8, 0.8 → estimates .75 .9 .9
    assert row[0.1]["estimated_der"] == pytest.approx(0.85, abs=1e-4)
    assert (row[0.1]["estimated_der_min"], row[0.1]["estimated_der_max"]) == pytest.approx((0.75, 0.9))
    assert row[0.2]["estimated_der"] == pytest.approx(1.0)
    alone = choose_for(net, {0.1: c1, 0.2: c2}, sets[0], CLASSES, probe_steps=1)
    one = choose_for_repeats(net, {0.1: c1, 0.2: c2}, sets[:1], CLASSES, probe_steps=1)
    est = [[r["estimated_der"] for r in x.candidates] for x in (alone, one)]
    assert (alone.value, alone.suspect) == (one.value, one.suspect) == (0.1, 1) and est[0] == est[1] == [1.0, 0.5]
    with pytest.raises(ValueError, match="no synthetic sets"):
        choose_for_repeats(net, {0.1: c1}, [], CLASSES)
    with pytest.raises(OtbrError, match="selection_repeats"):
        OTBR(input_shape=(1, 8, 8), selection_repeats=0)


def test_stratified_rule_averages_median_and_mean_over_the_sets_and_probes_its_suspect(monkeypatch) -> None:
    """``suspect_rule="stratified"``: each set's patch scan per (target, source) pair gives a per-class median over
    sources, ties broken by the mean. Set 0 alone names class 2 (median 0.5 beats 0.4), sets 1 and 2 name class 1
    (median 1.0); averaged, class 1 (0.8) beats class 2 (0.5). The probe goes toward the averaged suspect, the
    shipped target_scan is not run, and the report records the rule and the averaged scores."""
    net = tiny_net().eval()
    cand = copy.deepcopy(net)
    nan = float("nan")

    def rates(seed: int) -> torch.Tensor:
        r = torch.zeros(CLASSES, CLASSES, dtype=torch.float64)
        r[1, :] = 0.4 if seed == 0 else 1.0  # reached from every source: median 0.4 / 1.0
        r[2, 0] = 1.0  # reached from one source: median 0 in sets 1 and 2 …
        r[2, 1:] = 0.5 if seed == 0 else 0.0  # … and 0.5 in set 0
        return r.fill_diagonal_(nan)

    monkeypatch.setattr(scans, "stratified_scan", lambda *a, seed=0, **k: rates(seed))
    monkeypatch.setattr(selection, "target_scan", lambda *a, **k: pytest.fail("the shipped scan was run"))
    probed: list[int] = []
    monkeypatch.setattr(selection, "reverse_trigger",
                        lambda m, src, target, **k: probed.append(target) or (torch.zeros(1, 1, SIDE, SIDE),) * 2)
    monkeypatch.setattr(selection, "trigger_rate", lambda *a, **k: 1.0)
    sets = [torch.rand(30, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    c = choose_for_repeats(net, {0.1: cand}, sets, CLASSES, probe_steps=1, suspect_rule="stratified")
    assert c.suspect == 1 and [r["suspect"] for r in c.extra["repeats"]] == [2, 1, 1]
    assert c.extra["suspect_rule"] == "stratified" and "target_scan" not in c.extra
    assert c.extra["stratified_scan"]["median"][:3] == pytest.approx([0.0, 0.8, 0.5 / 3], abs=1e-3)
    assert set(probed) == {1, 2}  # set 0 probes its own suspect 2 and then the joint one
    one = choose_for(net, {0.1: cand}, sets[0], CLASSES, probe_steps=1, suspect_rule="stratified")
    assert one.suspect == 2 and one.extra["suspect_rule"] == "stratified"
    with pytest.raises(ValueError, match="suspect_rule"):
        choose_for_repeats(net, {0.1: cand}, sets, CLASSES, suspect_rule="vote")
    with pytest.raises(OtbrError, match="suspect_rule"):
        OTBR(input_shape=(1, 8, 8), suspect_rule="vote")
    assert OTBR(input_shape=(1, 8, 8)).config()["suspect_rule"] == "warp"  # the default
    assert "suspect_rule" not in OTBR(input_shape=(1, 8, 8), suspect_rule="scan").config()  # earlier cells' keys
    assert "suspect_rule" not in OTBR(input_shape=(1, 8, 8), gamma=0.05, suspect_rule="stratified").config()


def test_warp_rule_overrides_the_patch_suspect_only_when_one_class_alone_is_decisive(monkeypatch) -> None:
    """``suspect_rule="warp"``: the patch scan names class 1 in every set; the first set's warp scan (and only
    that set's) reaches class 3 from every source. Asserted: class 3 becomes the joint suspect and every set's own,
    the probe goes only toward 3, the report keeps the warp medians and the override. With two decisive classes, or
    none at the threshold (0.85 < 0.9), the patch suspect stands."""
    net = tiny_net().eval()
    cand = copy.deepcopy(net)
    nan = float("nan")
    warp_row: dict[int, float] = {3: 1.0}
    warps: list[int] = []

    def rates(*a, seed=0, kind="patch", **k) -> torch.Tensor:
        r = torch.zeros(CLASSES, CLASSES, dtype=torch.float64)
        if kind == "warp":
            warps.append(seed)
            for c, v in warp_row.items():
                r[c, :] = v
        else:
            r[1, :] = 1.0
        return r.fill_diagonal_(nan)

    monkeypatch.setattr(scans, "stratified_scan", rates)
    probed: list[int] = []
    monkeypatch.setattr(selection, "reverse_trigger",
                        lambda m, src, target, **k: probed.append(target) or (torch.zeros(1, 1, SIDE, SIDE),) * 2)
    monkeypatch.setattr(selection, "trigger_rate", lambda *a, **k: 1.0)
    sets = [torch.rand(30, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    c = choose_for_repeats(net, {0.1: cand}, sets, CLASSES, probe_steps=1, suspect_rule="warp")
    assert c.suspect == 3 and [r["suspect"] for r in c.extra["repeats"]] == [3, 3, 3] and set(probed) == {3}
    assert warps == [0] and c.extra["warp_scan"]["override"] == 3 and c.extra["warp_scan"]["median"][3] == 1.0
    assert c.extra["warp_scan"]["patch_suspect"] == 1
    assert c.extra["stratified_scan"]["median"][1] == 1.0  # the patch scan is still reported
    one = choose_for(net, {0.1: cand}, sets[0], CLASSES, probe_steps=1, suspect_rule="warp")
    assert one.suspect == 3 and one.extra["warp_scan"]["override"] == 3
    for row in ({3: 1.0, 2: 0.95}, {3: 0.85}):
        warp_row.clear()
        warp_row.update(row)
        c = choose_for_repeats(net, {0.1: cand}, sets, CLASSES, probe_steps=1, suspect_rule="warp")
        assert c.suspect == 1 and c.extra["warp_scan"]["override"] is None
    assert OTBR(input_shape=(1, 8, 8), suspect_rule="warp").config()["suspect_rule"] == "warp"


def test_collapse_guard_leaves_out_candidates_that_disagree_with_the_original_on_most_inputs() -> None:
    """0.3 loses the suspect's agreement entirely (backdoor drop 1) but disagrees on 3 of 4 other inputs: the
    unguarded rule takes it (estimated DER (1 + 1 − 0.7·0.75) / 2 ≈ 0.74 against 0.2's (1 + 0.5 − 0.7·0.25) / 2
    ≈ 0.66), the guard at 0.7 leaves it out and takes 0.2, and the report names it; when every candidate is out,
    the smallest is taken. The lean and the margin are read among the kept candidates only."""
    ref = torch.tensor([0, 0, 1, 1, 2, 2])
    cands = {0.1: ref.clone(), 0.2: torch.tensor([1, 0, 1, 1, 2, 0]),
             0.3: torch.tensor([1, 1, 0, 0, 0, 2])}
    free = choose(cands, ref, 3, suspect=0)
    guarded = choose(cands, ref, 3, suspect=0, collapse_limit=COLLAPSE_LIMIT)
    dis = {r["value"]: r["clean_disagreement"] for r in guarded.candidates}
    assert dis == pytest.approx({0.1: 0.0, 0.2: 0.25, 0.3: 0.75})
    assert free.value == 0.3 and "collapse_guard" not in free.extra
    assert guarded.value == 0.2 and guarded.candidates == free.candidates  # same estimates, fewer candidates
    assert guarded.extra["collapse_guard"] == {"limit": 0.7, "left_out": [0.3], "all_out": False}
    assert guarded.extra["lean"]["best_estimate"] == 0.2
    est = {r["value"]: r["estimated_der"] for r in guarded.candidates}
    assert guarded.extra["margin"] == pytest.approx(est[0.2] - est[0.1], abs=1e-4)
    assert choose(cands, ref, 3, suspect=0, collapse_limit=0.7, lean=0.5).value == 0.2  # 0.3 stays out
    strict = choose(cands, ref, 3, suspect=0, collapse_limit=0.01)
    assert strict.value == 0.1 and strict.extra["collapse_guard"]["left_out"] == [0.2, 0.3]  # 0.1 disagrees on none
    broken = {v: torch.tensor([2, 2, 0, 0, 0, 0]) for v in (0.1, 0.2)}
    out = choose(broken, ref, 3, suspect=0, collapse_limit=0.7)
    assert out.value == 0.1 and out.extra["collapse_guard"] == {"limit": 0.7, "left_out": [0.1, 0.2], "all_out": True}
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="collapse_limit"):
            choose(cands, ref, 3, collapse_limit=bad)


def test_otbr_collapse_limit_is_the_default_validated_keyed_and_reaches_the_selector(monkeypatch) -> None:
    """OTBR passes its collapse_limit (default COLLAPSE_LIMIT) to the selector; 1 means no guard; the config lists it
    only for the automatic γ with a guard, so the scan-without-guard runs stored before the option keep their keys."""
    from otbr.defenses import otbr as otbr_mod

    assert OTBR(input_shape=(1, 8, 8)).config()["collapse_limit"] == COLLAPSE_LIMIT == 0.7
    assert OTBR(input_shape=(1, 8, 8), collapse_limit=1.0).collapse_limit is None
    assert "collapse_limit" not in OTBR(input_shape=(1, 8, 8), collapse_limit=None).config()
    assert "collapse_limit" not in OTBR(input_shape=(1, 8, 8), gamma=0.05).config()
    with pytest.raises(OtbrError, match="collapse_limit"):
        OTBR(input_shape=(1, 8, 8), collapse_limit=0.0)
    seen: list[float | None] = []

    def fake(original, candidates, sets, num_classes, **kw):
        seen.append(kw["collapse_limit"])
        guard = {"limit": kw["collapse_limit"], "left_out": [0.1, 0.2] if len(seen) == 2 else [],
                 "all_out": len(seen) == 2}
        return Choice(value=min(candidates), suspect=0, extra={"collapse_guard": guard},
                      candidates=[{"value": v, "estimated_der": 0.5} for v in candidates])

    monkeypatch.setattr(otbr_mod, "choose_for_repeats", fake)
    net = tiny_net().eval()
    notes = [OTBR(steps=1, batch_size=8, synthetic=4, synthetic_steps=0, selection_repeats=1, gamma_grid=(0.1, 0.2),
                  collapse_limit=limit, input_shape=(1, SIDE, SIDE), progress=False).run(net).info["notes"]
             for limit in (COLLAPSE_LIMIT, 0.4)]
    assert seen == [COLLAPSE_LIMIT, 0.4]
    assert not any("collapse guard" in n for n in notes[0])
    assert any("more than 40 %" in n and "the smallest, 0.1" in n for n in notes[1])  # every γ left out


def test_negative_drops_do_not_reward() -> None:
    ref = torch.tensor([0, 1])
    c = choose({0.1: ref.clone()}, ref, 2, clean_drop={0.1: -0.3}, backdoor_drop={0.1: -0.2})
    assert c.candidates[0]["estimated_der"] == pytest.approx(0.5)


# -- the probes on a real (tiny) backdoor -------------------------------------------------------------------------
def test_synthesis_matches_bn_statistics_and_stays_in_range(backdoored) -> None:
    net, _, _ = backdoored
    syn = synthesize(net, 64, (1, SIDE, SIDE), steps=60, progress=False)
    assert syn.x.min() >= 0 and syn.x.max() <= 1 and syn.y.tolist() == [i % CLASSES for i in range(64)]
    assert syn.info["final_loss"]["ce"] < 0.5
    assert all(p.requires_grad for p in net.parameters())


# -- no poisoned data, no trigger ----------------------------------------------------------------------------------
def _forbid_data(monkeypatch) -> list[str]:
    """Make every way to read a dataset or apply a trigger raise, and record attempts."""
    import otbr.data as data_mod
    import otbr.data.registry as registry

    seen: list[str] = []

    def boom(name):
        def f(*a, **k):
            seen.append(name)
            raise AssertionError(f"the selector touched {name}")
        return f

    for mod in (data_mod, registry):
        if hasattr(mod, "load_dataset"):
            monkeypatch.setattr(mod, "load_dataset", boom("load_dataset"))
    for meth in ("apply", "apply_uint8", "poison_test", "poison_train"):
        if hasattr(Attack, meth):
            monkeypatch.setattr(Attack, meth, boom(f"Attack.{meth}"))
    return seen


def test_selection_module_imports_no_data_or_attack_code() -> None:
    tree = ast.parse(inspect.getsource(selection))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {n for n in names if n.startswith(("otbr.data", "otbr.attacks", "otbr.evaluation"))}, names


def test_otbr_auto_reads_no_data_and_ignores_what_it_is_given(backdoored, monkeypatch) -> None:
    """The auto run succeeds with every data reader and trigger raising, and handing it the poisoned test set
    changes nothing: same choice, bit-identical weights."""
    net, (xt, yt), _ = backdoored
    kw = {"steps": 3, "batch_size": 32, "synthetic": 64, "synthetic_steps": 30, "input_shape": (1, SIDE, SIDE),
          "progress": False}
    seen = _forbid_data(monkeypatch)
    res = OTBR(**kw).run(net)
    assert not seen and res.data_used == "none"
    poisoned = (trigger(xt[yt != 0]), torch.zeros(int((yt != 0).sum()), dtype=torch.long))
    res2 = OTBR(**kw).run(net, poisoned)
    assert res.info["auto"]["chosen"] == res2.info["auto"]["chosen"]
    assert res.info["auto"]["candidates"] == res2.info["auto"]["candidates"]
    a, b = res.model.state_dict(), res2.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    auto = res.info["auto"]
    assert res.config["gamma"] == "auto" and auto["chosen"] in OTBR().gamma_grid
    assert {"value", "estimated_der", "backdoor_drop", "clean_drop"} <= set(auto["candidates"][0])
    assert res.info["gamma"] == auto["chosen"] and "chosen automatically" in " ".join(res.info["notes"])
    rep = OTBR(**kw, selection_repeats=2).run(net, poisoned)  # averaged over two synthetic sets: still no data
    assert not seen and len(rep.info["auto"]["repeats"]) == 2 and len(rep.info["auto"]["synthetic"]) == 2


def test_tsbd_auto_uses_only_the_clean_subset(backdoored, monkeypatch) -> None:
    net, (_xt, _yt), clean = backdoored
    seen = _forbid_data(monkeypatch)
    res = TSBD(batch_size=32, ft_epochs=2, synthetic=64, progress=False).run(net, clean)
    assert not seen
    auto = res.info["auto"]
    assert auto["chosen"] in TSBD().neuron_grid and res.info["neuron_ratio"] == auto["chosen"]
    assert len(auto["candidates"]) == len(TSBD().neuron_grid) and auto["auto_ft_epochs"] == 1
    assert res.data_used.startswith("clean subset: 200 images")


def test_auto_needs_batchnorm_one_line() -> None:
    net = Normalized(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)),
                     (0.5,), (0.25,))
    with pytest.raises(OtbrError, match=r"BatchNorm.*pass a fixed gamma"):
        OTBR(input_shape=(1, 8, 8), progress=False).run(net)
    with pytest.raises(OtbrError, match="'auto'"):
        OTBR(gamma="sometimes")
    res = OTBR(gamma=0.1, steps=2, batch_size=8, input_shape=(1, 8, 8), progress=False).run(net)
    assert "auto" not in res.info


# -- command line -------------------------------------------------------------------------------------------------
def test_the_removal_reading_quotes_the_record_on_its_side_of_the_limit() -> None:
    low, high = selection.removal_evidence(-0.2, 6), selection.removal_evidence(0.9, 6)
    below, above = selection.REMOVAL_RECORD["below"], selection.REMOVAL_RECORD["above"]
    assert not low["likely_removed"] and "lost only 0%" in low["note"]
    assert f"stayed after {below[1] - below[0]} of {below[1]}" in low["note"]
    assert high["likely_removed"] and f"removed it {above[0]} times in {above[1]}" in high["note"]
    assert "class 6" in high["note"] and high["limit"] == selection.REMOVAL_DROP


def test_cli_prints_the_weak_suspect_warning(tmp_path: Path, monkeypatch) -> None:
    """With every probe counted weak, `otbr defend otbr` prints the warning (or, when the probe found nothing at
    all, that stronger warning instead) and the report carries it."""
    from otbr.cli.main import main

    monkeypatch.setattr(selection, "SUSPECT_WEAK_RATE", 1.01)
    model, _ = make_tiny_files(tmp_path, 40)
    report = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["defend", "otbr", str(model), "--steps", "2", "--batch-size", "16", "--no-eval",
                                    "--selection-repeats", "1", "-o", str(tmp_path / "o.safetensors"),
                                    "--report", str(report)])
    assert res.exit_code == 0, res.output
    auto = json.loads(report.read_text())["info"]["auto"]
    assert auto["suspect_check"]["weak"] is True
    expected = "found no trigger" if auto["probe"]["found"] is False else "may be a naturally easy class"
    assert any(line.startswith("warning:") and expected in line for line in res.output.splitlines())


def test_cli_says_when_the_warp_scan_overrides_the_patch_suspect(tmp_path: Path, monkeypatch) -> None:
    """``--suspect-rule warp``: when the warp scan names one class (forced here to the class after the patch
    suspect), the report's suspect is that class and the screen says so, naming the patch scan's class too; with
    no override, no such line."""
    from otbr.cli.main import main

    model, _ = make_tiny_files(tmp_path, 40)
    real = selection.warp_override
    forced: dict[str, int] = {}

    def fake(*a, **k):
        out = real(*a, **k)
        out["override"] = forced.get("class")
        if out["override"] is not None:  # as a real override: a decisive median (the tiny model's may be None)
            out["median"][out["override"]] = 1.0
        return out

    monkeypatch.setattr(selection, "warp_override", fake)
    args = ["defend", "otbr", str(model), "--steps", "2", "--batch-size", "16", "--no-eval", "--selection-repeats",
            "1", "--suspect-rule", "warp"]
    plain = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "a.safetensors"), "--report", str(tmp_path / "a")])
    assert plain.exit_code == 0, plain.output
    patch = json.loads((tmp_path / "a").read_text())["info"]["auto"]["suspected_target"]
    assert "suspect from the warp scan" not in plain.output
    forced["class"] = (patch + 1) % CLASSES
    res = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "b.safetensors"), "--report", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    auto = json.loads((tmp_path / "b").read_text())["info"]["auto"]
    assert auto["suspected_target"] == forced["class"] and auto["warp_scan"]["patch_suspect"] == patch
    assert f"suspect from the warp scan: class {forced['class']} is reached" in res.output
    assert f"the patch scan named class {patch}" in res.output


def test_cli_auto_is_the_default_and_reported(tmp_path: Path) -> None:
    from otbr.cli.main import main

    model, _ = make_tiny_files(tmp_path, 40)
    out, report = tmp_path / "o.safetensors", tmp_path / "r.json"
    res = CliRunner().invoke(main, ["defend", "otbr", str(model), "--steps", "2", "--batch-size", "16",
                                    "--no-eval", "-o", str(out), "--report", str(report)])
    assert res.exit_code == 0, res.output
    assert "automatic choice:" in res.output and "no poisoned data" in res.output
    assert "averaged over 3 synthetic sets" in res.output  # the default
    payload = json.loads(report.read_text())
    auto = payload["info"]["auto"]
    assert payload["config"]["gamma"] == "auto" and auto["candidates"]
    assert payload["config"]["suspect_rule"] == auto["suspect_rule"] == "warp" and "stratified_scan" in auto
    assert "warp_scan" in auto and auto["warp_scan"]["pixels"] == scans.WARP_PIXELS
    assert payload["config"]["collapse_limit"] == auto["collapse_guard"]["limit"] == COLLAPSE_LIMIT
    chosen = next(c for c in auto["candidates"] if c["value"] == auto["chosen"])
    removal = auto["removal"]  # the chosen candidate's own drop, read against REMOVAL_DROP, and said on screen
    assert removal["estimated_drop"] == round(chosen["backdoor_drop"], 4)
    assert removal["likely_removed"] is (chosen["backdoor_drop"] >= selection.REMOVAL_DROP)
    prefix = "removal evidence: " if removal["likely_removed"] else "warning: "
    assert prefix + removal["note"] in res.output.splitlines()
    rep = CliRunner().invoke(main, ["defend", "otbr", str(model), "--steps", "2", "--batch-size", "16", "--no-eval",
                                    "--selection-repeats", "1", "-o", str(tmp_path / "o2.safetensors")])
    assert rep.exit_code == 0, rep.output
    assert "automatic choice:" in rep.output and "synthetic sets" not in rep.output
    bad = CliRunner().invoke(main, ["defend", "otbr", str(model), "--gamma", "often", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "neither 'auto' nor a number" in bad.output and "Traceback" not in bad.output


def test_cli_suspect_rule_and_guard_reach_the_defense_and_the_report(tmp_path: Path) -> None:
    """``--suspect-rule scan --collapse-limit 0.5`` runs the scan (its scores in the report, no stratified scores)
    with that guard; the options' choices and stated defaults are the library's; wrong values are one-line usage
    errors."""
    from otbr.cli.main import main

    from cli.cmd_defend import defend_otbr
    from otbr.defenses.otbr import SUSPECT_RULE
    from otbr.selection import DATA_FREE_SUSPECT_RULES

    opt = next(p for p in defend_otbr.params if p.name == "suspect_rule")
    assert tuple(opt.type.choices) == DATA_FREE_SUSPECT_RULES and f"Default: {SUSPECT_RULE}." in opt.help
    limit = next(p for p in defend_otbr.params if p.name == "collapse_limit")
    assert limit.default is None and f"Default: {COLLAPSE_LIMIT:g}." in limit.help
    model, _ = make_tiny_files(tmp_path, 40)
    report = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["defend", "otbr", str(model), "--steps", "2", "--batch-size", "16", "--no-eval",
                                    "--selection-repeats", "2", "--suspect-rule", "scan", "--collapse-limit", "0.5",
                                    "-o", str(tmp_path / "o.safetensors"), "--report", str(report)])
    assert res.exit_code == 0, res.output
    payload = json.loads(report.read_text())
    auto = payload["info"]["auto"]
    chosen = next(c for c in auto["candidates"] if c["value"] == auto["chosen"])
    assert f"estimated clean cost: about {100 * max(chosen['clean_drop'], 0):.0f} % of the original" in res.output
    assert "suspect_rule" not in payload["config"] and auto["suspect_rule"] == "scan"
    assert len(auto["target_scan"]) == CLASSES and "stratified_scan" not in auto
    assert all("target_scan" in r for r in auto["repeats"])
    assert payload["config"]["collapse_limit"] == 0.5 and auto["collapse_guard"]["limit"] == 0.5
    for args in (["--suspect-rule", "vote"], ["--collapse-limit", "0"]):
        bad = CliRunner().invoke(main, ["defend", "otbr", str(model), *args, "-o", str(tmp_path / "x")])
        assert bad.exit_code == 2 and args[1] in bad.output and "Traceback" not in bad.output


def test_cli_says_which_candidates_the_collapse_guard_left_out(tmp_path: Path, monkeypatch) -> None:
    """`otbr defend otbr` names the γ the guard left out, and warns when it left out every one."""
    from otbr.cli.main import main

    from otbr.defenses import otbr as otbr_mod

    guards = iter([{"limit": 0.7, "left_out": [0.2], "all_out": False},
                   {"limit": 0.7, "left_out": [0.1, 0.2], "all_out": True}])

    def fake(original, candidates, sets, num_classes, **kw):
        return Choice(value=0.1, suspect=0, extra={"collapse_guard": next(guards)},
                      candidates=[{"value": v, "estimated_der": 0.5} for v in candidates])

    monkeypatch.setattr(otbr_mod, "choose_for_repeats", fake)
    model, _ = make_tiny_files(tmp_path, 40)
    outs = [CliRunner().invoke(main, ["defend", "otbr", str(model), "--steps", "2", "--batch-size", "16", "--no-eval",
                                      "--gamma-grid", "0.1,0.2", "-o", str(tmp_path / f"o{i}.safetensors")])
            for i in range(2)]
    assert all(r.exit_code == 0 for r in outs), [r.output for r in outs]
    assert "collapse guard: 0.2 left out" in outs[0].output and "warning: every candidate" not in outs[0].output
    assert any(line.startswith("warning: every candidate") and "the smallest, 0.1" in line
               for line in outs[1].output.splitlines())


def test_a_suspect_with_no_synthetic_inputs_counts_no_drop_instead_of_nan() -> None:
    """Found by the CLI test of the stratified rule: when the suspect (here class 2) has no synthetic input and no
    probe drop is given, its agreement was NaN, every estimate NaN, and the lean's pick crashed. Now the backdoor
    term is 0 for every candidate, the clean term decides, and the report says why."""
    ref = torch.tensor([0, 0, 1, 1])
    cands = {0.1: ref.clone(), 0.2: torch.tensor([0, 1, 1, 1])}
    c = choose(cands, ref, 3, suspect=2, lean=0.065)
    assert c.value == 0.1 and all(r["backdoor_drop"] == 0.0 for r in c.candidates)
    assert all(r["estimated_der"] == r["estimated_der"] for r in c.candidates)  # no NaN
    assert "none of the synthetic inputs" in c.extra["note"]
    assert "note" not in choose(cands, ref, 3, suspect=0).extra


def test_recall_rule_replaces_the_scan_suspect_only_when_the_original_misses_a_class(monkeypatch) -> None:
    """``suspect_rule="recall"``: the patch scan names class 1; when the original's recall on the labelled images
    (forced here) misses class 3, class 3 becomes the suspect and the probe goes toward it; with no class missed the
    scan's class stands. It needs the labelled images, and the data-free paths (OTBR, several synthetic sets) refuse
    it."""
    net = tiny_net().eval()
    cand = copy.deepcopy(net)
    scan = torch.zeros(CLASSES)
    scan[1] = 1.0
    monkeypatch.setattr(selection, "target_scan", lambda *a, **k: scan)
    recall = torch.full((CLASSES,), 0.9, dtype=torch.float64)
    monkeypatch.setattr(scans, "class_recall", lambda *a, **k: recall)
    probed: list[int] = []
    monkeypatch.setattr(selection, "reverse_trigger",
                        lambda m, src, target, **k: probed.append(target) or (torch.zeros(1, 1, SIDE, SIDE),) * 2)
    monkeypatch.setattr(selection, "trigger_rate", lambda *a, **k: 1.0)
    x = torch.rand(48, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    y = torch.arange(48) % CLASSES  # 12 images per class: at least RECALL_MIN_IMAGES
    kw = {"probe_steps": 1, "probe_images": x, "labels": y, "clean_drop": {0.1: 0.0}, "suspect_rule": "recall"}
    plain = choose_for(net, {0.1: cand}, x, CLASSES, **kw)
    assert plain.suspect == 1 and plain.extra["recall_scan"]["named"] is None and set(probed) == {1}
    recall[3] = 0.0
    probed.clear()
    c = choose_for(net, {0.1: cand}, x, CLASSES, **kw)
    assert c.suspect == 3 and set(probed) == {3} and c.extra["suspect_rule"] == "recall"
    assert c.extra["recall_scan"] == {"recall": [0.9, 0.9, 0.9, 0.0, *[0.9] * (CLASSES - 4)], "named": 3,
                                      "floor": scans.RECALL_FLOOR, "few_images": [], "scan_suspect": 1,
                                      "suspect": 3}
    few = choose_for(net, {0.1: cand}, x, CLASSES, **{**kw, "labels": torch.where(y == 3, 0, y)})  # no image of 3
    assert few.suspect == 1 and few.extra["recall_scan"]["few_images"] == [3]
    with pytest.raises(ValueError, match="labelled clean images"):
        choose_for(net, {0.1: cand}, x, CLASSES, probe_steps=1, suspect_rule="recall")
    for rule in ("recall", "warp", "stratified"):  # without the probe a rule would be silently ignored
        with pytest.raises(ValueError, match="needs probe=True"):
            choose_for(net, {0.1: cand}, x, CLASSES, **{**kw, "suspect_rule": rule, "probe": False})
    with pytest.raises(ValueError, match="data-free selection"):
        choose_for_repeats(net, {0.1: cand}, [x, x], CLASSES, suspect_rule="recall")
    with pytest.raises(OtbrError, match="suspect_rule"):
        OTBR(input_shape=(1, 8, 8), suspect_rule="recall")
    assert TSBD(suspect_rule="recall").config()["suspect_rule"] == "recall"
    assert "suspect_rule" not in TSBD(neuron_ratio=0.1, suspect_rule="recall").config()
    with pytest.raises(OtbrError, match="suspect_rule"):
        TSBD(suspect_rule="vote")
