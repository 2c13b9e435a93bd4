"""Train the model zoo: a clean and one backdoored model per attack on Fashion-MNIST.

Models are cached in ``benchmarks/zoo/<name>.safetensors`` and reused when the
file's recorded zoo configuration matches; results go to
``benchmarks/results/zoo-fmnist.md`` and ``.json``.

Usage:
    python benchmarks/zoo.py [--zoo main|second|third|fourth|fifth|sixth|seventh|eighth|ninth] [--epochs 3] [--out DIR]
                             [--only NAME[,NAME]] [--threads 2] [--force]

Example:
    $ python benchmarks/zoo.py --epochs 3 --only badnets
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from otbr.attacks import attack_from_config, create_attack
from otbr.data import load_dataset
from otbr.metrics import evaluate
from otbr.models import load_model, read_meta, save_model
from otbr.training import train_backdoored

log = logging.getLogger("zoo")

DATA = "fashion-mnist"
SEED = 0
PREACT = {"arch": "preactresnet18", "arch_kwargs": {"width": 16}}
VGG = {"arch": "vgg11_bn", "arch_kwargs": {"width": 16, "classifier_width": 128, "pool_size": 1, "image_size": 28}}

#: name → (architecture, attack name or None, attack kwargs). Order matters: trojan needs "clean".
ENTRIES: dict[str, dict[str, Any]] = {
    "clean": {**PREACT, "attack": None},
    "badnets": {**PREACT, "attack": "badnets"},
    "blended": {**PREACT, "attack": "blended"},
    "sig": {**PREACT, "attack": "sig"},
    "wanet": {**PREACT, "attack": "wanet"},
    "lf": {**PREACT, "attack": "lf"},
    "trojan": {**PREACT, "attack": "trojan"},
    "vgg11-badnets": {**VGG, "attack": "badnets"},
}

#: A second zoo with other trigger settings, targets, poison rates and seed, so rules tuned on the first zoo
#: (e.g. the automatic γ of OTBR) can be checked on models they were not designed with.
SECOND: dict[str, dict[str, Any]] = {
    "badnets-t3": {**PREACT, "attack": "badnets", "attack_kwargs": {"size": 4, "value": 0.8, "target": 3,
                                                                   "poison_rate": 0.05}},
    "blended-t7": {**PREACT, "attack": "blended", "attack_kwargs": {"alpha": 0.15, "target": 7}},
    "vgg11-blended-t5": {**VGG, "attack": "blended", "attack_kwargs": {"alpha": 0.2, "target": 5,
                                                                      "poison_rate": 0.05}},
    "vgg11-sig-t2": {**VGG, "attack": "sig", "attack_kwargs": {"target": 2, "poison_rate": 0.05}},
}

#: A third zoo, held out: defined (and the automatic-γ rule fixed, see ``otbr.selection``) before any of its
#: models were trained or defended, so a rule's numbers on it were not available while writing the rule.
THIRD: dict[str, dict[str, Any]] = {
    "badnets-t9": {**PREACT, "attack": "badnets", "attack_kwargs": {"size": 3, "target": 9}},
    "wanet-t4": {**PREACT, "attack": "wanet", "attack_kwargs": {"target": 4}},
    "lf-t8": {**PREACT, "attack": "lf", "attack_kwargs": {"target": 8}},
    "vgg11-badnets-t6": {**VGG, "attack": "badnets", "attack_kwargs": {"size": 4, "target": 6,
                                                                      "poison_rate": 0.05}},
}

#: A fourth zoo, held out from the rule changes made after the third zoo's results (the probe's relative rate
#: drop and the "probe found nothing" handling, see ``otbr.selection``): defined and trained before those
#: changes were run on it.
FOURTH: dict[str, dict[str, Any]] = {
    "blended-t1": {**PREACT, "attack": "blended", "attack_kwargs": {"alpha": 0.25, "target": 1}},
    "wanet-t8": {**PREACT, "attack": "wanet", "attack_kwargs": {"strength": 0.6, "target": 8}},
    "sig-t6": {**PREACT, "attack": "sig", "attack_kwargs": {"frequency": 4, "target": 6}},
    "vgg11-lf-t3": {**VGG, "attack": "lf", "attack_kwargs": {"target": 3}},
}
#: A fifth zoo, held out from everything decided on the first four (the three-set averaging of OTBR's
#: automatic γ, its lean, the clean-term scale, and any rule pre-registered before its results are read):
#: defined and trained on 2026-11-23 before any defense ran on it.
FIFTH: dict[str, dict[str, Any]] = {
    "badnets-t5": {**PREACT, "attack": "badnets", "attack_kwargs": {"size": 3, "value": 0.9, "target": 5,
                                                                   "poison_rate": 0.05}},
    "blended-t4": {**PREACT, "attack": "blended", "attack_kwargs": {"alpha": 0.2, "target": 4}},
    "lf-t2": {**PREACT, "attack": "lf", "attack_kwargs": {"eps": 0.08, "cutoff": 4.0, "target": 2}},
    "vgg11-wanet-t7": {**VGG, "attack": "wanet", "attack_kwargs": {"strength": 0.6, "target": 7}},
}
#: A sixth zoo, held out from everything decided on the first five — the shipped defaults (three synthetic sets,
#: lean 0.065) and the collapse guard pre-registered with it (benchmarks/RESULTS.md, "Choosing γ and n"): defined on
#: 2026-11-23 and committed before any of its models was trained.
SIXTH: dict[str, dict[str, Any]] = {
    "badnets-t8": {**PREACT, "attack": "badnets", "attack_kwargs": {"size": 4, "value": 0.7, "target": 8}},
    "blended-t9": {**PREACT, "attack": "blended", "attack_kwargs": {"alpha": 0.25, "target": 9,
                                                                   "poison_rate": 0.05}},
    "wanet-t2": {**PREACT, "attack": "wanet", "attack_kwargs": {"k": 6, "strength": 0.5, "target": 2}},
    "vgg11-badnets-t4": {**VGG, "attack": "badnets", "attack_kwargs": {"size": 3, "target": 4}},
}
#: A seventh zoo, held out from the suspect signals read on the first six (``benchmarks/scan_explore.py``): defined
#: on 2026-11-23 and committed before any of its models was trained, to test the source-stratified "patch median"
#: suspect on models it was not picked on. Two blended triggers aimed at shirt's neighbours (dress, pullover),
#: and a WaNet aimed at shirt itself. Rule written with it: the patch median goes on to a three-set selection re-run
#: only if, on these four models (``scan_explore.py``, seed 0), it names the target on at least as many as the
#: shipped scan and loses none of the shipped scan's hits. Amended before any of its results (training still
#: running): the patch median with its ties broken by the patch mean (``scan_explore.TIED_PATCH``), since the plain
#: arg-max gives ties to the lowest class, which decided four of its hits on the first six zoos. Measured on it as
#: shipped, too: OTBR's automatic γ (three sets, lean 0.065), and whether the weak-suspect warning
#: (``otbr.selection.SUSPECT_WEAK_RATE``, read off the first six zoos) flags every model whose suspect is wrong.
SEVENTH: dict[str, dict[str, Any]] = {
    "blended-t3": {**PREACT, "attack": "blended", "attack_kwargs": {"alpha": 0.2, "target": 3}},
    "blended-t2": {**PREACT, "attack": "blended", "attack_kwargs": {"alpha": 0.15, "target": 2,
                                                                   "poison_rate": 0.05}},
    "badnets-t1": {**PREACT, "attack": "badnets", "attack_kwargs": {"size": 3, "target": 1}},
    "wanet-t6": {**PREACT, "attack": "wanet", "attack_kwargs": {"strength": 0.5, "target": 6}},
}
#: An eighth zoo, held out from the stratified suspect rule adopted on 2026-11-24 (``otbr.defenses.otbr.SUSPECT_RULE``):
#: defined and committed before any of its models was trained. It carries two warping triggers (the family the rule
#: lost on: VGG WaNet-t7, WaNet-t2), one blended and one patch trigger. Rule written with it: OTBR's automatic γ is
#: run on it with both suspect rules (``auto_bench.py --repeats 3 --zoo eighth``, with and without
#: ``--suspect-rule scan``); the stratified rule stays the default unless, over the seventh and eighth zoos together
#: (the two held out from the signal), its mean DER gap is higher than the scan rule's — then the default goes back
#: to the scan.
EIGHTH: dict[str, dict[str, Any]] = {
    "blended-t5": {**PREACT, "attack": "blended", "attack_kwargs": {"alpha": 0.2, "target": 5}},
    "wanet-t9": {**PREACT, "attack": "wanet", "attack_kwargs": {"strength": 0.5, "target": 9}},
    "badnets-t7": {**PREACT, "attack": "badnets", "attack_kwargs": {"size": 3, "value": 0.8, "target": 7}},
    "vgg11-wanet-t1": {**VGG, "attack": "wanet", "attack_kwargs": {"strength": 0.6, "target": 1}},
}
#: A ninth zoo, held out from everything decided by 2026-11-24, defined and committed before any of its models was
#: trained, for the rule pre-registered in benchmarks/RESULTS.md ("The stratified suspect rule"): the stratified
#: suspect rule with the collapse guard (threshold 0.70, ``auto_bench.COLLAPSE_LIMIT``) becomes OTBR's default if,
#: on these four models, its mean DER gap is lower than the shipped scan rule's and its worst gap no higher (both
#: rules run with ``auto_bench.py --repeats 3 --zoo ninth``, with and without ``--suspect-rule stratified``).
NINTH: dict[str, dict[str, Any]] = {
    "blended-t8": {**PREACT, "attack": "blended", "attack_kwargs": {"alpha": 0.2, "target": 8}},
    "wanet-t3": {**PREACT, "attack": "wanet", "attack_kwargs": {"strength": 0.5, "target": 3}},
    "lf-t5": {**PREACT, "attack": "lf", "attack_kwargs": {"target": 5}},
    "vgg11-wanet-t5": {**VGG, "attack": "wanet", "attack_kwargs": {"strength": 0.6, "target": 5}},
}
#: A tenth zoo, held out from everything decided by 2026-11-24 — the switch to the stratified suspect with the
#: collapse guard included — defined and committed before any of its models was trained. It measures the shipped
#: data-free and data-dependent selections (``auto_bench.py --repeats 3 --zoo tenth``, and ``--method tsbd``) where
#: nothing was chosen; no rule change is attached to it: whatever it shows, the defaults stay (a change read off it
#: would need another zoo held out from that change). The earlier rule (``--suspect-rule scan --collapse-limit 1``)
#: is run beside it for comparison when time allows. A blended trigger aimed at shirt, the class a small patch
#: reaches easily on every model, a low-frequency and a patch trigger, and a blended VGG model.
TENTH: dict[str, dict[str, Any]] = {
    "blended-t6": {**PREACT, "attack": "blended", "attack_kwargs": {"alpha": 0.2, "target": 6}},
    "lf-t9": {**PREACT, "attack": "lf", "attack_kwargs": {"target": 9}},
    "badnets-t4": {**PREACT, "attack": "badnets", "attack_kwargs": {"size": 4, "target": 4}},
    "vgg11-blended-t7": {**VGG, "attack": "blended", "attack_kwargs": {"alpha": 0.2, "target": 7}},
}
#: An eleventh zoo, held out like the tenth from everything decided by 2026-11-24 (defined on 2026-11-24 at 05:36
#: UTC and committed before any of its models was trained). It widens the shipped selections' held-out measure
#: (``auto_bench.py --repeats 3 --zoo eleventh``, ``--method tsbd``, and the repair at the shipped choice) to
#: families the ninth and tenth lack: a SIG trigger, a warping trigger on PreAct-ResNet18, a patch trigger and a
#: low-frequency VGG model. No rule change is attached to it: whatever it shows, the defaults stay.
ELEVENTH: dict[str, dict[str, Any]] = {
    "sig-t4": {**PREACT, "attack": "sig", "attack_kwargs": {"target": 4}},
    "wanet-t7": {**PREACT, "attack": "wanet", "attack_kwargs": {"strength": 0.5, "target": 7}},
    "badnets-t2": {**PREACT, "attack": "badnets", "attack_kwargs": {"size": 3, "target": 2}},
    "vgg11-lf-t8": {**VGG, "attack": "lf", "attack_kwargs": {"target": 8}},
}
#: A twelfth zoo, defined on 2026-11-24 at 08:37 UTC, while ``conditional_probe_explore.py`` was running on the 47
#: stored models and before its result was read, and committed before any of its models was trained. Held out from
#: everything decided by then. **Pre-registered:** if that probe meets the reading rule in its docstring (its
#: conditional backdoor term's single-set mean gap at least 0.3 below the shipped term's, worst no higher), the
#: conditional term is the one alternative to the shipped OTBR rule, and it becomes the default only if on these four
#: models (three synthetic sets, the product's code, both terms read from the same sets) its mean DER gap is lower
#: than the shipped rule's and its worst gap no higher. If the probe does not meet its rule, no rule change is
#: attached and the zoo measures the shipped selections held out, like the tenth and eleventh. Families: SIG and
#: blended (where the over-pruning lives), a patch toward class 6 (the class wrong suspects favour) and a VGG model.
TWELFTH: dict[str, dict[str, Any]] = {
    "sig-t8": {**PREACT, "attack": "sig", "attack_kwargs": {"target": 8}},
    "blended-t0": {**PREACT, "attack": "blended", "attack_kwargs": {"alpha": 0.2, "target": 0}},
    "badnets-t6": {**PREACT, "attack": "badnets", "attack_kwargs": {"size": 3, "target": 6}},
    "vgg11-blended-t1": {**VGG, "attack": "blended", "attack_kwargs": {"alpha": 0.2, "target": 1}},
}
#: A thirteenth zoo, defined on 2026-11-24 at 09:26 UTC, after the twelfth zoo's OTBR results were read and before
#: any of its own models was trained; committed before training. **Pre-registered:** the collapse guard's limit 0.62
#: replaces 0.70 as OTBR's default (``otbr.selection.COLLAPSE_LIMIT``; the lean and everything else unchanged) if,
#: on these four models, its mean DER gap to the oracle is lower than the shipped rule's and its worst gap no higher
#: (three synthetic sets, the product's code with the shipped defaults; the 0.62 choice re-made from the same stored
#: estimates, ``auto_bench.guarded_choice(row, 62)``, which is what the selector computes). Where the value comes
#: from: the best pair of the family table of ``shipped_split.py`` (limit × lean, an ORACLE fit on the 47 models of
#: the first eleven zoos), committed at 0611f64 before the twelfth zoo was defined. On the twelfth zoo, held out from
#: that table, it scored gaps 37.01, 0, 2.07, 4.04 (mean 10.78) against the shipped 37.01, 0, 21.26, 4.04 (15.58):
#: seen before this rule was written, so not evidence for it. Otherwise the default stays. **Outcome** (2026-11-24,
#: ``auto_bench.py --repeats 3 --zoo thirteenth``, merged into ``auto-otbr-stratified-guard-fmnist``; the
#: ``gap_limit_62`` column of ``auto-otbr-shipped-split-fmnist.md``): gaps 10.41, 9.62, 2.39, 0 at either limit — the
#: rule is not met and the limit stays 0.70.
THIRTEENTH: dict[str, dict[str, Any]] = {
    "sig-t2": {**PREACT, "attack": "sig", "attack_kwargs": {"target": 2}},
    "blended-t4": {**PREACT, "attack": "blended", "attack_kwargs": {"alpha": 0.2, "target": 4}},
    "wanet-t5": {**PREACT, "attack": "wanet", "attack_kwargs": {"strength": 0.5, "target": 5}},
    "vgg11-badnets-t3": {**VGG, "attack": "badnets", "attack_kwargs": {"size": 3, "target": 3}},
}
# (vgg11-lf-t3 was first defined with a 5 % poison rate: 37 % ASR after 2 epochs, too weak a backdoor to test a
# defense on; changed to the default 10 % and 4 epochs, see EPOCHS, before any defense ran on it.)
#: A fourteenth zoo, defined on 2026-11-24 at 11:15 UTC and committed before any of its models was trained. Held out
#: from everything decided by then. No selection rule change is attached: it measures the shipped selections held
#: out (``auto_bench.py --repeats 3 --zoo fourteenth``, ``--method tsbd``), with six models to widen that measure.
#: **Pre-registered reading** of OTBR's removal evidence, the report's ``removal`` entry added the same day: the chosen
#: γ's estimated backdoor drop against 90 % (one minus the issue's 10 % ASR criterion; over the 55 models of the
#: first thirteen zoos, seen before this was written, the backdoor stayed on 20 of the 23 models below it and went on
#: 21 of the 32 at or above it — counted by hand; ``shipped_split.py`` counts 21 of 24 and 21 of 31, one model at
#: 86.8 % having been miscounted; the 90 % itself is unchanged). The zoo's counts of both cases are reported as they
#: come, whatever they are.
#: Families: the ones the held-out zoos have least (low-frequency and warping triggers on PreAct-ResNet18, a patch of
#: size 4, SIG, and two VGG models). Two entries were replaced after training, before any defense ran (below).
#: **Outcome** (2026-11-24, ``auto_bench.py --repeats 3 --zoo fourteenth``, merged into
#: ``auto-otbr-stratified-guard-fmnist``; the removal section of ``auto-otbr-shipped-split-fmnist.md``): OTBR gaps 4.55,
#: 2.47, 0, 4.63, 5.53, 1.41 (mean 3.10, worst 5.53); the removal reading was right on 5 of 6 (BadNets-t0 above the
#: line and cleaned; LF-t6, SIG-t3, VGG LF-t0, VGG WaNet-t3 below and backdoored; WaNet-t1 below yet cleaned).
FOURTEENTH: dict[str, dict[str, Any]] = {
    "lf-t6": {**PREACT, "attack": "lf", "attack_kwargs": {"target": 6}},
    "wanet-t1": {**PREACT, "attack": "wanet", "attack_kwargs": {"strength": 0.5, "target": 1}},
    "badnets-t0": {**PREACT, "attack": "badnets", "attack_kwargs": {"size": 4, "target": 0}},
    "sig-t3": {**PREACT, "attack": "sig", "attack_kwargs": {"target": 3}},
    "vgg11-wanet-t3": {**VGG, "attack": "wanet", "attack_kwargs": {"strength": 0.5, "target": 3}},
    "vgg11-lf-t0": {**VGG, "attack": "lf", "attack_kwargs": {"target": 0}},
}
# (sig-t9 and vgg11-sig-t5 were the first two SIG entries: their backdoors stayed weak — sig-t9 ASR 52.0 % after 2
# epochs and 37.9 % after 3, vgg11-sig-t5 29.8 % after 4 and 29.3 % after 6; SIG is clean-label here, and the
# footwear classes 5 and 9 are told apart without the signal. Replaced by sig-t3 and vgg11-lf-t0 before any defense
# ran; their files were not kept. vgg11-lf-t0 came out weak too, ASR 44.8 % after its 4 epochs; it is kept as it is,
# as the second zoo's vgg11-sig-t2 was at 37.9 %: a held-out model is not re-drawn until it suits.)
#: A fifteenth zoo, defined on 2026-11-24 at 12:18 UTC, after the fourteenth zoo's repair results were read, and
#: committed before any of its models was trained. Held out from everything decided by then. **Pre-registered:** the
#: repair's backdoor check flags a class other than the suspect that the pruning suppressed and the repair made easier
#: to trigger when it also ends 0.15 (instead of 0.25) above its rate on the original (``otbr.repair.backdoor_check``);
#: the stricter margin becomes the default if, on this zoo's repairs at the shipped choice (``repair_bench.py --zoo
#: fifteenth``), re-scored from their stored check rates (``benchmarks/repair_check_rescore.py``), no model's DER is
#: lower than under 0.25. Where 0.15 comes from: re-scored over the 45 stored repair runs (the GPU run, the two
#: held-out files), it flips only the fourteenth zoo's WaNet-t1 (a revived backdoor, DER 39.55, to its pruned model,
#: DER 76.19) — seen before this rule was written, so not evidence for it; 0.10 flips the same, 0 also throws away the
#: main LF model's good repair. Otherwise the margin stays 0.25. The zoo also measures the shipped selections held out.
#: **Outcome** (2026-11-24, ``repair_bench.py --zoo fifteenth --append``, ``repair_check_rescore.py``): no outcome of
#: the four repairs changes under 0.15, so none is worse: the rule is met and 0.15 is ``otbr.repair.EASY_MARGIN``.
#: OTBR's gaps here: 27.78 (WaNet-t0, a wrong suspect), 2.65, 2.83, 0 (BadNets-t8, LF-t4, VGG WaNet-t6); TSBD's:
#: 0, 0, 1.12, 1.55 in the same order.
#: Families: WaNet (where the wrong suspects with removable backdoors live), a patch, a low-frequency trigger, and VGG.
FIFTEENTH: dict[str, dict[str, Any]] = {
    "wanet-t0": {**PREACT, "attack": "wanet", "attack_kwargs": {"strength": 0.5, "target": 0}},
    "badnets-t8": {**PREACT, "attack": "badnets", "attack_kwargs": {"size": 3, "target": 8}},
    "lf-t4": {**PREACT, "attack": "lf", "attack_kwargs": {"target": 4}},
    "vgg11-wanet-t6": {**VGG, "attack": "wanet", "attack_kwargs": {"strength": 0.5, "target": 6}},
}
#: A sixteenth zoo, defined on 2026-11-24 at 14:07 UTC, while the warp scan ran on the first fifteen zoos
#: (``benchmarks/warp_scan_explore.py``; eight of its 65 rows read by then), and committed before any of its models was
#: trained. Held out from everything decided by then. **Pre-registered:** OTBR's suspect takes the warp override
#: (the one class whose warp median reaches 0.9, else the stratified suspect; the rule in that script's docstring) only
#: if (a) the override met that script's own rule on the 65 models (fixes at least four wrong suspects, breaks no hit)
#: and (b) on this zoo, with the override, the selection names the real target on at least as many models as the
#: stratified rule and no model's DER gap is larger than under it (models whose suspect does not change keep their
#: run). Families: WaNet in both architectures (where 7 of the 16 wrong suspects are; the PreAct one with a 6×6
#: control grid), and a blend (weight 0.15), a 5-pixel patch and SIG, on which an override would be the risk. Names
#: carry the setting that differs, as every target of the PreAct WaNet, blended and BadNets names is taken.
#: **Outcome** (2026-11-24, ``auto_bench.py --repeats 3 --zoo sixteenth --suspect-rule warp``, and without the override
#: on VGG WaNet-t2, the one model whose suspect it changed): (a) met on the 65 models (7 fixed, none broken,
#: ``warp-scan-explore-fmnist.md``); (b) met — targets named 4 of 5 against 3, gaps 0, 0, 1.05, 0, 2.85 under both
#: rules. ``otbr.defenses.otbr.SUSPECT_RULE`` is ``"warp"`` since. TSBD's gaps here: 2.33, 2.83, 0, 0, 20.37 (SIG-t1).
SIXTEENTH: dict[str, dict[str, Any]] = {
    "wanet-k6-t4": {**PREACT, "attack": "wanet", "attack_kwargs": {"k": 6, "strength": 0.5, "target": 4}},
    "vgg11-wanet-t2": {**VGG, "attack": "wanet", "attack_kwargs": {"strength": 0.5, "target": 2}},
    "blended-a15-t3": {**PREACT, "attack": "blended", "attack_kwargs": {"alpha": 0.15, "target": 3}},
    "badnets-s5-t1": {**PREACT, "attack": "badnets", "attack_kwargs": {"size": 5, "target": 1}},
    "sig-t1": {**PREACT, "attack": "sig", "attack_kwargs": {"target": 1}},
}
# (sig-t1 came out weak, ASR 88.4 % with ACC 80.2 % after its 2 epochs; kept as it is, as vgg11-lf-t0 was: a held-out
# model is not re-drawn until it suits.)
#: A seventeenth zoo, defined on 2026-11-24 at 19:36 UTC with the sinusoid scan's rule
#: (``benchmarks/sine_scan_explore.py``), before that scan's first committed run and before any of these models was
#: trained. SIG is where the data-free suspect fails (all 8 SIG models of the first sixteen zoos get a wrong suspect);
#: the scan uses SIG's *published* amplitude and frequencies 1 to 12, and the zoo models were all made with SIG's
#: published frequency 6 (one with 4) and amplitude 40/255, so this zoo varies both: frequency 8, frequency 5, and
#: amplitude 30/255; with a BadNets model as the control (a stripe must not name a wrong class there).
#: **Pre-registered:** the sinusoid class (:func:`otbr.scans.sine_class`) holds up here if it names the target on at
#: least two of the three SIG models and names no class other than the target on any of the four.
#: **Outcome** (trained after the scan's 70 rows were read, before any defense; ``sine_scan_explore.py --models
#: seventeenth:…``): **not met** — the scan names no class on any of the four (the SIG targets' contrasts 0.15, 0.42,
#: 0.46, each below 0.5; SIG-f8-t3's largest is shirt's 0.42). The scan had already failed its own rule on the 70.
#: Trained with ``--threads 1`` (sig-d30-t4 with 2, beside a probe). Then the shipped OTBR selection, held out
#: (``auto-otbr-zoo17-fmnist.md``): gaps 1.46, 3.70, 2.82, 1.71; right suspect on BadNets-s4-t7 only.
SEVENTEENTH: dict[str, dict[str, Any]] = {
    "sig-f8-t3": {**PREACT, "attack": "sig", "attack_kwargs": {"frequency": 8, "target": 3}},
    "sig-f5-t0": {**PREACT, "attack": "sig", "attack_kwargs": {"frequency": 5, "target": 0}},
    "sig-d30-t4": {**PREACT, "attack": "sig", "attack_kwargs": {"delta": 30 / 255, "target": 4}},
    "badnets-s4-t7": {**PREACT, "attack": "badnets", "attack_kwargs": {"size": 4, "target": 7}},
}

#: An eighteenth zoo, defined on 2026-11-24 at 22:47 UTC, after TSBD's recall suspect was adopted and before any of
#: these models was trained: the held-out test of that rule (``otbr.scans.recall_override``), which was written
#: after the SIG failures had been seen. SIG at half the poison rate (5 %: only half the target class's training images
#: carry the stripe, so the model may keep part of the class's clean recall), SIG on VGG (whose SIG-t2 came out weak),
#: SIG at the zoo's usual settings, and a BadNets control at a 20 % poison rate (the rule must not fire there).
#: **Pre-registered:** (a) the recall rule names no class other than the target on any of the four (if it does, TSBD's
#: default goes back to ``"scan"``); (b) TSBD's automatic n, as shipped, scores a mean DER gap ≤ 1 and a worst ≤ 5
#: on the four (issue 7's goal; reported either way, nothing is changed by it).
#: **Outcome** (``zoo18-fmnist.md``; three of the SIG models came out weak, kept as trained: SIG-p05-t5 ASR 30.4 % at
#: full accuracy, VGG SIG-t8 77.3 %, SIG-t9 48.3 %; then ``auto_bench.py --method tsbd --zoo eighteenth``, two
#: processes, merged into ``auto-tsbd-recall-fmnist``): (a) **met** — the rule names the target on VGG SIG-t8 (recall
#: 0.20) and SIG-t9 (0.00), where the patch scan already had it, and nothing on SIG-p05-t5 (the target keeps 0.94 of its
#: clean images; the scan's suspect, 6, stays wrong) or on BadNets; (b) **met** — gaps 1.73, 0.81, 0, 0 (mean 0.64).
#: OTBR's shipped selection, held out too (``auto-otbr-zoo18-fmnist.md``): gaps 0, 0, 3.06, 3.05; suspects 8, 6, 6
#: wrong on the three SIG models, right on BadNets.
#: **The repair, held out** (written on 2026-11-25 at 00:29 UTC, after the fused fallback was adopted and before any
#: repair ran on this zoo): ``repair_bench.py`` as shipped (150 steps, a rejected repair gives the fused model) at the
#: recorded automatic γ (``auto-otbr-zoo18-fmnist.json``), two models at a time → ``repair-zoo18-cpu-fmnist``, then
#: joined into the held-out record. Reported as run; nothing is changed by it. Expected before the run: BadNets-p20-t2
#: (right suspect) ends at ≤ 10 % ASR; the three SIG models (wrong suspects) keep what the pruning leaves of their
#: backdoors, unless the check rejects the repair and the fusion had removed it.
#: **Outcome** (``repair-zoo18-cpu-fmnist.md``; no repair rejected): BadNets-p20-t2 0.00 % ASR (DER 95.88), as
#: expected; SIG-t9 0.00 % (DER 71.28; the scan guard guarded its target beside the wrong suspect); SIG-p05-t5 26.9 %
#: and VGG SIG-t8 82.8 % keep theirs. Held-out record with it: 35 models, DER 81.05, 8 above 10 % ASR (all SIG).
#: **The repair's stripe pass, held out** (written on 2026-11-25 at 02:42 UTC — committed at 02:41 UTC, d85505c, the
#: stated minute one late — before any stripe pass ran on a model
#: of the tenth to eighteenth zoos; ``otbr.repair.repair(stripe_pass=True)``, ``STRIPE_DECISIVE`` 0.2 fixed before the
#: first development run, ``STRIPE_BELOW`` 0.5 set on the development models — main SIG, fourth SIG-t6, second VGG
#: SIG-t2, main WaNet and Blended, ``repair-stripe-*`` — after the held-out record's stored patch-scan rates had been
#: printed beside the development ones in the same session, so that limit is not blind to them; the pass's outcomes
#: on them are unseen). The pass can only run where the original's patch reach is below 0.5; on the 35 held-out
#: repair models (``repair-heldout-current-cpu-fmnist``) that holds for 15 (10 SIG, LF-t9, Blended-t0, VGG
#: WaNet-t3, LF-t4, Blended-a15-t3), which are re-run with ``repair_bench.py --stripe-pass`` at their recorded γ and
#: suspect (two at a time) → ``repair-stripe-heldout-cpu-fmnist``; the other 20 keep their stored rows, and the
#: re-run's own patch reach must stay below 0.5 where it was stored below (else the row is reported as it ran).
#: Joined with ``repair_join.py --fused-fallback``. **Adoption** (the pass on by default in ``repair``, OTBR's
#: ``--repair`` and ``otbr repair``) if, over the 35: the models above 10 % ASR fall from 8 to 5 or fewer, the mean
#: DER does not fall, and no model at or below 10 % ASR goes above it. Expected: SIG models whose target answers a
#: stripe lose their backdoor at little accuracy (their target class was already lost); a false flag on a blended or
#: LF model gives up one more class (≈ 3 DER on the development Blended).
#: **Outcome: met** (``repair-stripe-heldout-cpu-fmnist``, joined in ``repair-heldout-stripe-cpu-fmnist``): the pass
#: named the real target on 7 of the 10 SIG models; models above 10 % ASR 8 → 2 (SIG-f8-t3, SIG-p05-t5: no stripe
#: answered), mean DER 81.05 → 88.89, ACC loss 11.28 → 11.56, none pushed above 10 %; shirt named on LF-t9, Blended-t0
#: and Blended-a15-t3 (DER −4.93, −2.68, +2.43). ``stripe_pass`` is on by default since.
#: **Prune lighter, then repair, held out** (written 2026-11-25 at 05:54 UTC, before any capped repair ran on a model of
#: the tenth to eighteenth zoos): ``repair_bench.py --gamma-cap 0.05`` prunes at min(automatic γ, 0.05), the
#: published fixed γ, chosen before any run. Development (``repair-cap05-dev-cpu-fmnist``: main BadNets and Trojan,
#: third LF-t8, fourth WaNet-t8, γ 0.15–0.2 → 0.05, against ``repair-gpu-fmnist``): ASR stays 0.00 on all four, ACC
#: +1.3, +1.1, +0.6, +7.3. Held out: the 12 of the 35 held-out repair models whose automatic γ is 0.15 or 0.2 (the
#: cap moves them two or three grid steps; the six at 0.1 are left for time), re-run with ``--gamma-cap 0.05`` at
#: their recorded suspect, two at a time → ``repair-cap05-heldout-cpu-fmnist``, joined in place of their rows.
#: **Adoption** (OTBR's ``--repair`` pruning at most 0.05) if, over the 12: the mean ACC loss falls, the mean DER does
#: not fall, and no model at or below 10 % ASR goes above it.
#: **Outcome: met** (``repair-cap05-heldout-cpu-fmnist``; the session that wrote the rule was cut off after nine of
#: the twelve, and the last three — Blended-a15-t3, SIG-f5-t0, BadNets-p20-t2 — were appended with ``--append`` on
#: 2026-12-07 under the same command): mean ACC loss 16.43 → 13.14, mean DER 91.43 → 93.08, no model pushed above
#: 10 % ASR (all twelve at 0.00 %); DER up on 11 of 12 (WaNet-t1 84.53 → 91.61: its repair at 0.2 had been rejected,
#: the capped one is kept), down on LF-t9 (83.49 → 82.99). ``REPAIR_GAMMA_CAP`` 0.05 is OTBR's default since. The six
#: held-out models at γ 0.1, which the shipped cap also moves, were re-run afterwards for the record
#: (``repair-cap05-gamma10-cpu-fmnist``; not part of the test).
EIGHTEENTH: dict[str, dict[str, Any]] = {
    "sig-p05-t5": {**PREACT, "attack": "sig", "attack_kwargs": {"poison_rate": 0.05, "target": 5}},
    "vgg11-sig-t8": {**VGG, "attack": "sig", "attack_kwargs": {"target": 8}},
    "sig-t9": {**PREACT, "attack": "sig", "attack_kwargs": {"target": 9}},
    "badnets-p20-t2": {**PREACT, "attack": "badnets", "attack_kwargs": {"poison_rate": 0.2, "target": 2}},
}

#: zoo name → (entries, seed, results file stem)
ZOOS: dict[str, tuple[dict[str, dict[str, Any]], int, str]] = {
    "main": (ENTRIES, 0, "zoo-fmnist"),
    "second": (SECOND, 1, "zoo2-fmnist"),
    "third": (THIRD, 2, "zoo3-fmnist"),
    "fourth": (FOURTH, 3, "zoo4-fmnist"),
    "fifth": (FIFTH, 4, "zoo5-fmnist"),
    "sixth": (SIXTH, 5, "zoo6-fmnist"),
    "seventh": (SEVENTH, 6, "zoo7-fmnist"),
    "eighth": (EIGHTH, 7, "zoo8-fmnist"),
    "ninth": (NINTH, 8, "zoo9-fmnist"),
    "tenth": (TENTH, 9, "zoo10-fmnist"),
    "eleventh": (ELEVENTH, 10, "zoo11-fmnist"),
    "twelfth": (TWELFTH, 11, "zoo12-fmnist"),
    "thirteenth": (THIRTEENTH, 12, "zoo13-fmnist"),
    "fourteenth": (FOURTEENTH, 13, "zoo14-fmnist"),
    "fifteenth": (FIFTEENTH, 14, "zoo15-fmnist"),
    "sixteenth": (SIXTEENTH, 15, "zoo16-fmnist"),
    "seventeenth": (SEVENTEENTH, 16, "zoo17-fmnist"),
    "eighteenth": (EIGHTEENTH, 17, "zoo18-fmnist"),
}
#: zoo name → default model folder and the --zoo/--epochs arguments that made its committed results
FOLDERS = {"main": "benchmarks/zoo", "second": "benchmarks/zoo2", "third": "benchmarks/zoo3",
           "fourth": "benchmarks/zoo4", "fifth": "benchmarks/zoo5",
           "sixth": "benchmarks/zoo6", "seventh": "benchmarks/zoo7", "eighth": "benchmarks/zoo8",
           "ninth": "benchmarks/zoo9", "tenth": "benchmarks/zoo10", "eleventh": "benchmarks/zoo11",
           "twelfth": "benchmarks/zoo12", "thirteenth": "benchmarks/zoo13", "fourteenth": "benchmarks/zoo14",
           "fifteenth": "benchmarks/zoo15", "sixteenth": "benchmarks/zoo16",
           "seventeenth": "benchmarks/zoo17", "eighteenth": "benchmarks/zoo18"}
MADE_WITH = {"main": "", "second": " --zoo second --epochs 2", "third": " --zoo third --epochs 2",
             "fourth": " --zoo fourth --epochs 2", "fifth": " --zoo fifth --epochs 2",
             "sixth": " --zoo sixth --epochs 2", "seventh": " --zoo seventh --epochs 2",
             "eighth": " --zoo eighth --epochs 2", "ninth": " --zoo ninth --epochs 2",
             "tenth": " --zoo tenth --epochs 2", "eleventh": " --zoo eleventh --epochs 2",
             "twelfth": " --zoo twelfth --epochs 2", "thirteenth": " --zoo thirteenth --epochs 2",
             "fourteenth": " --zoo fourteenth --epochs 2", "fifteenth": " --zoo fifteenth --epochs 2",
             "sixteenth": " --zoo sixteenth --epochs 2", "seventeenth": " --zoo seventeenth --epochs 2",
             "eighteenth": " --zoo eighteenth --epochs 2"}
TITLES = {"second": "second zoo: other triggers, targets and seed",
          "third": "third zoo, held out: defined before the automatic-γ calibration was tested on it",
          "fourth": "fourth zoo, held out from the rule changes made after the third zoo's results",
          "fifth": "fifth zoo, held out from everything decided on the first four",
          "sixth": "sixth zoo, held out from everything decided on the first five",
          "seventh": "seventh zoo, held out from the suspect signals read on the first six",
          "eighth": "eighth zoo, held out from the stratified suspect rule",
          "ninth": "ninth zoo, held out from everything decided by 2026-11-24",
          "tenth": "tenth zoo, held out from everything decided by 2026-11-24, the shipped OTBR rule included",
          "eleventh": "eleventh zoo, held out like the tenth (more attack families)",
          "twelfth": "twelfth zoo, held out from everything decided by 2026-11-24 08:37 UTC",
          "thirteenth": "thirteenth zoo, held out from the collapse limit pre-registered with it",
          "fourteenth": "fourteenth zoo, held out from everything decided by 2026-11-24 11:15 UTC",
          "fifteenth": "fifteenth zoo, held out from the repair-check margin pre-registered with it",
          "sixteenth": "sixteenth zoo, held out from the warp override pre-registered with it",
          "seventeenth": "seventeenth zoo, held out from the sinusoid scan pre-registered with it",
          "eighteenth": "eighteenth zoo, held out from TSBD's recall suspect (adopted before it was trained)"}

#: attacks that need more epochs than --epochs to reach a high ASR (name → epochs); see the results note.
#: vgg11-lf-t3: 2 epochs at 10 % poison gave ASR 79.9 % (at 5 %: 37 %); vgg11-wanet-t7 was given 4 from the start,
#: by analogy (the VGG models learn a trigger more slowly), not after a weak 2-epoch run; vgg11-badnets-t4 likewise.
#: wanet-t2: 2 epochs gave ASR 88.1 % and ACC 3.4 points below clean (both flagged); given 3 before any defense ran.
#: wanet-t6 was given 3 from the start, by analogy with wanet-t2; wanet-t9, wanet-t3, vgg11-wanet-t1 and
#: vgg11-wanet-t5 likewise (3, 3, 4 and 4); in the eleventh zoo wanet-t7 (3) and vgg11-lf-t8 (4, as vgg11-lf-t3 needed);
#: in the thirteenth, wanet-t5 (3) and vgg11-badnets-t3 (4, as vgg11-badnets-t4), from the start; in the fourteenth,
#: wanet-t1 (3), vgg11-wanet-t3 (4) and vgg11-lf-t0 (4, as the other VGG LF models), from the start; in the
#: fifteenth, wanet-t0 (3) and vgg11-wanet-t6 (4), from the start; in the sixteenth, wanet-k6-t4 (3) and
#: vgg11-wanet-t2 (4), from the start; in the eighteenth, vgg11-sig-t8 (4, as VGG SIG-t2 came out weak at 2), from the
#: start.
EPOCHS: dict[str, int] = {"vgg11-lf-t3": 4, "vgg11-wanet-t7": 4, "vgg11-badnets-t4": 4, "wanet-t2": 3, "wanet-t6": 3,
                          "wanet-t9": 3, "vgg11-wanet-t1": 4, "wanet-t3": 3, "vgg11-wanet-t5": 4, "wanet-t7": 3,
                          "vgg11-lf-t8": 4, "wanet-t5": 3, "vgg11-badnets-t3": 4, "wanet-t1": 3, "vgg11-wanet-t3": 4,
                          "vgg11-lf-t0": 4, "wanet-t0": 3, "vgg11-wanet-t6": 4, "wanet-k6-t4": 3,
                          "vgg11-wanet-t2": 4, "vgg11-sig-t8": 4}

ASR_MIN = 0.90
ACC_DROP_MAX = 0.03


def zoo_key(name: str, entry: dict[str, Any], epochs: int, seed: int = SEED) -> dict[str, Any]:
    """What a cached model must match to be reused."""
    return {"name": name, "data": DATA, "arch": entry["arch"], "arch_kwargs": entry["arch_kwargs"],
            "attack": entry["attack"], "attack_kwargs": entry.get("attack_kwargs", {}), "epochs": epochs, "seed": seed}


def cached(path: Path, key: dict[str, Any]) -> bool:
    """True if ``path`` holds a model trained with ``key``."""
    if not path.is_file():
        return False
    meta = read_meta(path)
    return bool(meta and meta.history and meta.history[0].get("zoo_key") == key)


def build_one(name: str, epochs: int, out: Path, test: Any, train: Any, force: bool,
              entries: dict[str, dict[str, Any]] = ENTRIES, seed: int = SEED) -> dict[str, Any]:
    """Train (or reuse) one zoo model and return its results row."""
    entry = entries[name]
    epochs = EPOCHS.get(name, epochs)
    key = zoo_key(name, entry, epochs, seed)
    path = out / f"{name}.safetensors"
    if not force and cached(path, key):
        log.info("%s: cached at %s", name, path)
        model, meta = load_model(path)
        poisoned = attack_from_config(meta.attack).poison_test(test) if meta.attack else None
        metrics = evaluate(model, (test.x, test.y), poisoned.as_tuple() if poisoned is not None else None)
        wall = float(meta.history[0].get("wall_s", float("nan")))
    else:
        attack = None
        clean_model = None
        if entry["attack"] is not None:
            attack = create_attack(entry["attack"], seed=seed, **entry.get("attack_kwargs", {}))
        if entry["attack"] == "trojan":
            clean_path = out / "clean.safetensors"
            if not clean_path.is_file():
                raise SystemExit("trojan needs the clean model: run the zoo with --only clean first")
            clean_model, _ = load_model(clean_path)
        log.info("%s: training %s, attack %s, %d epochs", name, entry["arch"], entry["attack"], epochs)
        t0 = time.perf_counter()
        result = train_backdoored(DATA, entry["arch"], arch_kwargs=entry["arch_kwargs"], attack=attack,
                                  clean_model=clean_model, epochs=epochs, seed=seed, train_ds=train, test_ds=test)
        result.meta.history[0]["zoo_key"] = key
        result.meta.history[0]["total_s"] = round(time.perf_counter() - t0, 2)
        save_model(result.model, path, result.meta)
        metrics, meta, wall = result.report.metrics, result.meta, result.report.wall_s
    log.info("%s: ACC %.4f ASR %s RA %s (%.0f s)", name, metrics.acc, metrics.asr, metrics.ra, wall)
    return {"model": name, "arch": entry["arch"], "arch_kwargs": entry["arch_kwargs"], "attack": entry["attack"],
            "attack_config": meta.attack, "epochs": epochs, "acc": metrics.acc, "asr": metrics.asr, "ra": metrics.ra,
            "train_s": round(wall, 1), "file": str(path)}


def ENTRY_KWARGS(row: dict[str, Any]) -> dict[str, Any]:  # noqa: N802 - table helper
    """The attack settings a zoo row was trained with (target and rate included)."""
    cfg = row.get("attack_config") or {}
    keep = {k: v for k, v in cfg.items()
            if v is not None and k not in ("name", "seed", "pattern_sha256") and not isinstance(v, list | dict)}
    return keep


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def write_results(rows: list[dict[str, Any]], results: Path, stem: str = "zoo-fmnist", seed: int = SEED,
                  clean_acc: float | None = None) -> None:
    """Write ``<stem>.json`` and ``<stem>.md`` (ACC gap to clean, notes for weak attacks)."""
    results.mkdir(parents=True, exist_ok=True)
    zoo = next(z for z, v in ZOOS.items() if v[2] == stem)
    clean_acc = next((r["acc"] for r in rows if r["attack"] is None), clean_acc)
    for r in rows:
        notes = []
        r["acc_gap"] = None if clean_acc is None else r["acc"] - clean_acc
        if r["asr"] is not None and r["asr"] < ASR_MIN:
            notes.append(f"ASR < {100 * ASR_MIN:.0f} %")
        if r["acc_gap"] is not None and r["acc_gap"] < -ACC_DROP_MAX:
            notes.append(f"ACC > {100 * ACC_DROP_MAX:.0f} points below clean")
        r["note"] = "; ".join(notes)
    (results / f"{stem}.json").write_text(json.dumps({"dataset": DATA, "seed": seed, "models": rows}, indent=2))
    if zoo == "main":
        setting = f"seed {seed}, all-to-one target 0, poison rate 10 %."
        title = "# Model zoo — Fashion-MNIST"
    else:
        setting = f"seed {seed}; targets, poison rates and trigger settings per row (config column)."
        title = f"# Model zoo `{stem}` — Fashion-MNIST ({TITLES[zoo]})"
    lines = [
        title,
        "",
        f"Dataset {DATA} (60 000 train / 10 000 test), {setting}",
        "ACC: clean test accuracy; ASR/RA: on the triggered non-target test images (9 000); percentages.",
        "ΔACC: ACC minus the clean model's (the first zoo's clean model for the second zoo). Train time: wall",
        "seconds of the training loop on the machine it ran on (2 CPU cores shared with other work, so times are",
        "indicative only).",
        f"Generated by `python benchmarks/zoo.py{MADE_WITH[zoo]}`.",
        "",
        "| model | arch | attack | config | epochs | ACC | ASR | RA | ΔACC | train time (s) | note |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        gap = "—" if r["acc_gap"] is None or r["attack"] is None else f"{100 * r['acc_gap']:+.2f}"
        cfg = ", ".join(f"{k}={v}" for k, v in ENTRY_KWARGS(r).items()) or "defaults"
        lines.append(f"| {r['model']} | {r['arch']} | {r['attack'] or 'none'} | {cfg} | {r['epochs']} | "
                     f"{_pct(r['acc'])} | {_pct(r['asr'])} | {_pct(r['ra'])} | {gap} | {r['train_s']:.0f} | "
                     f"{r['note']} |")
    (results / f"{stem}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--zoo", choices=sorted(ZOOS), default="main",
                        help="main: one model per attack (target 0, seed 0); second: other settings for "
                        "checking rules; third: held out (other settings again, seed 2); fourth: held out from "
                        "the changes made after the third zoo's results (seed 3); fifth: held out from everything "
                        "decided on the first four (seed 4); sixth: held out from everything decided on the first "
                        "five (seed 5); seventh: held out from the suspect signals read on the first six (seed 6); "
                        "eighth: held out from the stratified suspect rule (seed 7); ninth: held out from everything "
                        "decided by 2026-11-24 (seed 8)")
    parser.add_argument("--out", type=Path, default=None,
                        help="model folder (default benchmarks/zoo, zoo2 … zoo9)")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--only", default=None,
                        help="comma-separated zoo names: " + ", ".join(n for e, _, _ in ZOOS.values() for n in e))
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads; give 1 when two trainings run at once on the 2-core machine (two at 2 "
                             "threads each oversubscribe the cores and train many times slower)")
    parser.add_argument("--force", action="store_true", help="retrain even if a matching cached model exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    entries, seed, stem = ZOOS[args.zoo]
    out = args.out or Path(FOLDERS[args.zoo])
    names = list(entries) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in entries]
    if unknown:
        parser.error(f"unknown zoo names {unknown}; known: {', '.join(entries)}")
    train = load_dataset(DATA, "train")
    test = load_dataset(DATA, "test")
    json_path = args.results / f"{stem}.json"
    rows: dict[str, dict[str, Any]] = {}
    if json_path.is_file():
        rows = {r["model"]: r for r in json.loads(json_path.read_text()).get("models", [])}
    clean_acc = None
    main_json = args.results / "zoo-fmnist.json"
    if args.zoo != "main" and main_json.is_file():
        clean_acc = next((r["acc"] for r in json.loads(main_json.read_text())["models"] if r["attack"] is None), None)
    for name in names:
        rows[name] = build_one(name, args.epochs, out, test, train, args.force, entries, seed)
        write_results([rows[n] for n in entries if n in rows], args.results, stem, seed, clean_acc)
    log.info("results in %s", args.results / f"{stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
