"""Spike2Former training: the matcher, the losses against references, the recipe, a learning step, resume."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

import zoo
from tasks.segmentation.data import load_dataset
from tasks.segmentation.loss import (LossWeights, MaskFormerLoss, dice_cost, dice_loss, focal_cost, match,
                                     semantic_to_instances)
from tasks.segmentation.models import _TINY
from tasks.segmentation.spike2former import build_spike2former
from tasks.segmentation.synthetic import write_ade20k
from tasks.segmentation.train import TrainConfig, build_optimizer, lr_factor, train
from zoo.errors import ZooError

_SMALL = {**_TINY, "embed_dims": (8, 16, 32, 48), "num_queries": 6, "feat_channels": 32, "decoder_layers": 2,
          "decoder_ffn": 64, "encoder_ffn": 64, "dcn_group": 4}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("segshapes")
    write_ade20k(root, n_train=6, n_val=2, seed=1)
    return root


def test_costs_are_the_losses_of_each_pair():
    g = torch.Generator().manual_seed(0)
    pred, gt = torch.randn(5, 40, generator=g) * 3, (torch.rand(3, 40, generator=g) > 0.5).float()
    fc, dc = focal_cost(pred, gt), dice_cost(pred, gt)
    for q, k in itertools.product(range(5), range(3)):
        ref = sigmoid_focal_loss(pred[q], gt[k], alpha=0.25, gamma=2.0, reduction="mean")
        assert fc[q, k] == pytest.approx(float(ref), rel=1e-4, abs=1e-7)
        p = pred[q].sigmoid()
        assert dc[q, k] == pytest.approx(float(1 - (2 * (p * gt[k]).sum() + 1) / (p.sum() + gt[k].sum() + 1)), rel=1e-5)
    assert torch.allclose(dice_loss(pred[:3], gt), dc.diagonal()[:3], atol=1e-6)


def test_matching_is_the_cheapest_assignment():
    g = torch.Generator().manual_seed(1)
    cls, masks = torch.randn(5, 4, generator=g), torch.randn(5, 6, 6, generator=g) * 2
    gt_classes = torch.tensor([0, 2, 1])
    gt_masks = (torch.rand(3, 12, 12, generator=g) > 0.6).float()
    rows, cols = match(cls, masks, gt_classes, gt_masks)
    small = F.interpolate(gt_masks[:, None], size=(6, 6), mode="nearest")[:, 0].flatten(1)
    w = LossWeights()
    cost = (-cls.softmax(-1)[:, gt_classes] * w.cls_cost + focal_cost(masks.flatten(1), small) * w.mask_cost
            + dice_cost(masks.flatten(1), small) * w.dice_cost)
    brute = min(sum(float(cost[q, k]) for k, q in enumerate(p)) for p in itertools.permutations(range(5), 3))
    assert sorted(cols.tolist()) == [0, 1, 2] and len(set(rows.tolist())) == 3
    assert float(cost[rows, cols].sum()) == pytest.approx(brute, rel=1e-6)


def test_loss_on_a_toy_image_matches_a_direct_computation():
    label = torch.tensor([[0, 0, 2, 2], [0, 255, 2, 2], [1, 1, 2, 2], [1, 1, 255, 2]])
    classes, gt = semantic_to_instances(label)
    assert classes.tolist() == [0, 1, 2] and gt.shape == (3, 4, 4) and gt[:, 1, 1].sum() == 0
    g = torch.Generator().manual_seed(2)
    cls, masks = torch.randn(1, 1, 4, 4, generator=g), torch.randn(1, 1, 4, 2, 2, generator=g)
    crit = MaskFormerLoss(3)
    total, items = crit(cls, masks, label[None])
    rows, cols = match(cls[0, 0], masks[0, 0], classes, gt)
    target = torch.full((4,), 3)
    target[rows] = classes[cols]
    cw = torch.tensor([1, 1, 1, 0.1])
    ce = sum(cw[t] * F.cross_entropy(cls[0, 0, q], t) for q, t in enumerate(target)) / cw[target].sum()
    up = F.interpolate(masks[0, 0, rows][:, None], size=(4, 4), mode="bilinear", align_corners=False)[:, 0]
    focal = sigmoid_focal_loss(up, gt[cols], reduction="mean")
    p = up.sigmoid().flatten(1)
    dice = (1 - (2 * (p * gt[cols].flatten(1)).sum(1) + 1) / (p.sum(1) + gt[cols].flatten(1).sum(1) + 1)).mean()
    assert items["cls"] == pytest.approx(float(ce), rel=1e-5)
    assert items["mask"] == pytest.approx(float(focal), rel=1e-5)
    assert items["dice"] == pytest.approx(float(dice), rel=1e-5)
    assert float(total) == pytest.approx(float(ce + 20 * focal + dice), rel=1e-5)


def test_recipe_optimizer_groups_and_schedule():
    model = build_spike2former(**_SMALL)
    cfg = TrainConfig(iters=10_000, warmup_iters=100)
    opt = build_optimizer(model, cfg)
    lrs = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        lr, wd = lrs[id(p)]
        assert lr == pytest.approx(1e-4 if name.startswith("backbone.") else 1e-3)
        assert wd == (0.0 if name.split(".")[1] in ("query_embed", "query_feat", "level_embed") else 0.005)
    assert lr_factor(0, cfg) == pytest.approx(1e-6) and lr_factor(50, cfg) == pytest.approx(0.5, rel=1e-4)
    assert lr_factor(100, cfg) == 1.0 and lr_factor(5050, cfg) == pytest.approx(0.5) and lr_factor(10_000, cfg) == 0


def test_a_few_steps_reduce_the_loss_on_one_batch(shapes):
    torch.manual_seed(0)
    model = build_spike2former(**_SMALL).train()
    ds = load_dataset(shapes, split="train")
    from tasks.segmentation.train import TrainTransform

    t = TrainTransform(ds, TrainConfig(crop=64, photometric=0, flip=0))
    imgs, labels = map(torch.stack, zip(*[t(i) for i in range(2)]))
    opt = build_optimizer(model, TrainConfig())  # no clipping: see the demo card (clip 0.01 stalls a random init)
    crit = MaskFormerLoss(7)
    losses = []
    for _ in range(6):
        _, cls, masks = model(imgs, return_layers=True)
        loss, _ = crit(cls, masks, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("backbone.downsample1_1"))
    assert losses[-1] < losses[0]


def test_train_checkpoints_resumes_and_loads(shapes, tmp_path):
    train_set, val_set = load_dataset(shapes, split="train"), load_dataset(shapes, split="val")
    cfg = dict(iters=2, batch=2, crop=64, warmup_iters=1, val_interval=2)
    metrics = train(build_spike2former(**_SMALL), train_set, val_set, cfg=TrainConfig(**cfg), out=tmp_path,
                    log=lambda s: None, progress=False)
    assert metrics["iter"] == 2 and 0 <= metrics["mIoU"] <= 1
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", "best.safetensors"}  # nothing left half-written
    logs = []
    out = train(build_spike2former(**_SMALL), train_set, None, cfg=TrainConfig(**{**cfg, "iters": 3}), out=tmp_path,
                resume=tmp_path / "last.pt", log=logs.append, progress=False)
    assert out["iter"] == 3 and "resumed" in logs[0]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["iter"] == 3
    model = zoo.load("spike2former-tiny-shapes", weights=tmp_path / "best.safetensors", **_SMALL)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 7, 64, 64)
    with pytest.raises(ZooError, match="does not fit"):
        train(build_spike2former(**{**_SMALL, "num_queries": 5}), train_set, cfg=TrainConfig(**cfg), out=tmp_path,
              resume=tmp_path / "last.pt", log=lambda s: None, progress=False)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ZooError, match="resume"):
        train(build_spike2former(**_SMALL), train_set, cfg=TrainConfig(**cfg), out=tmp_path,
              resume=tmp_path / "bad.pt", log=lambda s: None, progress=False)


def test_labels_outside_the_model_classes_are_an_error(shapes, tmp_path):
    ds = load_dataset(shapes, split="train")
    with pytest.raises(ZooError, match="outside the model's 3 classes"):
        train(build_spike2former(**{**_SMALL, "num_classes": 3}), ds, cfg=TrainConfig(iters=1, batch=6, crop=64),
              out=tmp_path, log=lambda s: None, progress=False)


def test_demo_card_matches_its_architecture_and_data():
    from tasks.segmentation.synthetic import CLASSES

    card = zoo.info("spike2former-tiny-shapes")
    model = zoo.load("spike2former-tiny-shapes", pretrained=False)
    assert card.classes == CLASSES and model.cfg.num_classes == len(CLASSES)
    assert sum(p.numel() for p in model.parameters()) == card.params


def _firing(model, imgs, names):
    """Fraction of non-zero outputs of the named neurons on ``imgs``."""
    rates, hooks = {}, []
    for n, m in model.named_modules():
        if n in names:
            hooks.append(m.register_forward_hook(lambda mod, i, out, n=n: rates.__setitem__(n, float((out > 0).float().mean()))))
    with torch.no_grad():
        model(imgs)
    for h in hooks:
        h.remove()
    return rates


def test_calibrated_start_makes_the_silent_neurons_fire(shapes):
    from tasks.segmentation.train import TrainTransform, calibrate_firing

    torch.manual_seed(0)
    model = build_spike2former(**_SMALL).train()  # the demo architecture: attention_gain=True
    t = TrainTransform(load_dataset(shapes, split="train"), TrainConfig(crop=64, photometric=0, flip=0))
    imgs = torch.stack([t(i)[0] for i in range(4)])
    names = {n for n, _ in model.named_modules() if n.endswith("attn_spike") or n.startswith("decode_head.mask_embed.spike")}
    before = _firing(model, imgs, names)
    assert min(before.values()) < 0.02  # from random weights some of them are (nearly) silent
    factors = calibrate_firing(model, imgs)
    assert len(factors) == 2 + 2 * 2 + 2 + 1  # backbone block3 + block4, 2 decoder layers x (cross, self), fc1 + fc2,
    # and the mask features, now of unit spread:
    out = {}
    hook = model.decode_head.pixel_decoder.mask_feature.register_forward_hook(lambda m, i, o: out.setdefault("x", o))
    with torch.no_grad():
        model(imgs)
    hook.remove()
    assert float(out["x"].std()) == pytest.approx(1.0, rel=0.05)
    after = _firing(model, imgs, names)
    assert all(0.15 < r < 0.5 for r in after.values()), after
    # the gains are buffers saved with the weights; the official architecture has none
    assert sum(k.endswith(".gain") for k in model.state_dict()) == 6
    assert not any(k.endswith(".gain") for k in build_spike2former(**{**_SMALL, "attention_gain": False}).state_dict())


def test_semantic_loss_is_the_cross_entropy_of_the_test_time_map():
    g = torch.Generator().manual_seed(3)
    cls, masks = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)  # 3 classes + no object
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    labels[0, :2] = 255
    loss = MaskFormerLoss(3, LossWeights(semantic=1.0)).semantic_loss(cls, masks, labels)
    total, n = 0.0, 0
    for b, y, x in itertools.product(range(2), range(4), range(4)):
        target = int(labels[b, 2 * y, 2 * x])  # nearest: the top-left pixel of each 2x2 cell
        if target == 255:
            continue
        p = [sum(float(cls[b, q].softmax(-1)[c] * masks[b, q, y, x].sigmoid()) for q in range(5)) for c in range(3)]
        total, n = total - torch.log(torch.tensor(p[target] / sum(p))).item(), n + 1
    assert float(loss) == pytest.approx(total / n, rel=1e-5)
    assert MaskFormerLoss(3)(cls[None], masks[None], labels)[1]["semantic"] == 0.0  # off in the official recipe


def test_the_shipped_demo_segmenter_works(tmp_path):
    """The bundled weights (sha256-checked on load) segment freshly generated held-out shapes (a seed the training
    never saw) well above the background-only plateau (~12 % mIoU), and spike mode gives the same labels."""
    from tasks.segmentation.evaluate import evaluate
    from tasks.segmentation.synthetic import write_ade20k

    write_ade20k(tmp_path, n_train=0, n_val=12, seed=4242)
    data = load_dataset(tmp_path, split="val")
    res = evaluate(zoo.load("spike2former-tiny-shapes"), data, keep_predictions=True)
    assert res.miou > 0.6 and res.aacc > 0.9, (res.miou, res.aacc)
    spike = evaluate(zoo.load("spike2former-tiny-shapes", mode="spike"), data, keep_predictions=True)
    assert all(torch.equal(a, b) for a, b in zip(res.predictions, spike.predictions))
