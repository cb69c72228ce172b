"""The multi-task module without a Trainer: heads per task, gradients, optimizer groups, schedule, FLOPs."""

import math

import pytest
import timm
import torch
from fixtures_model import NUM_CLASSES, make_batch, tiny_config
from torch.utils.flop_counter import FlopCounterMode

from evaluation.head_metrics import WeakLabelMAP, precision_at_k
from lit_modules import MultiTaskModule
from lit_modules.backbones import create_backbone, feature_dim
from lit_modules.callbacks import device_peak_flops, mfu
from lit_modules.optim import warmup_cosine


@pytest.fixture(scope="module")
def vit_cfg():
    return tiny_config()


def _module(cfg, seed=0):
    torch.manual_seed(seed)
    return MultiTaskModule(cfg, NUM_CLASSES)


def test_heads_sized_from_num_classes_and_feature_width_from_model(vit_cfg):
    m = _module(vit_cfg)
    assert m.feature_dim == m.backbone.num_features == 192  # ViT-Ti width, read from the model
    assert m.heads["weak_label"].weight.shape == (12, 192)
    assert m.heads["embedding"].proj.weight.shape == (256, 192)
    assert m.heads["embedding"].proxies["weak_label"].shape == (12, 256)
    assert m.heads["embedding"].proxies["fashion_mnist"].shape == (10, 256)
    assert m.heads["classifiers"]["fashion"].weight.shape == (10, 192)
    assert [t.name for t in m.tasks] == ["weak_label", "embedding/weak_label", "embedding/fashion_mnist", "clf/fashion"]


@pytest.mark.parametrize(
    "name,kwargs,img,width",
    [
        ("vit_small_patch16_224", {"depth": 1}, 48, 384),
        ("vit_base_patch14_reg4_dinov2", {"depth": 1}, 56, 768),  # patch 14, register tokens, other img size
        ("resnet18", {}, 40, 512),
    ],
)
def test_backbone_any_size_and_width(name, kwargs, img, width):
    model = create_backbone({"name": name, "kwargs": kwargs}, img)
    assert feature_dim(model) == width
    assert model(torch.randn(2, 3, img, img)).shape == (2, width)


def test_backbone_rejects_bad_settings():
    with pytest.raises(ValueError, match="not a timm model"):
        create_backbone({"name": "vit_nonexistent"}, 32)
    with pytest.raises(ValueError, match="data.img_size=36 is not a multiple of the patch size 8x8"):
        create_backbone({"name": "vit_tiny_patch16_224", "kwargs": {"patch_size": 8, "depth": 1}}, 36)
    with pytest.raises(ValueError, match="model.kwargs.img_size"):
        create_backbone({"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 64}}, 32)


def test_embed_is_normalized_and_backbone_feature_is_pooled(vit_cfg):
    m = _module(vit_cfg).eval()
    images = torch.randn(3, 3, 32, 32)
    emb = m.embed(images)
    assert emb.shape == (3, 256)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(m.embed(images, feature="backbone"), m.backbone(images))
    with pytest.raises(ValueError, match="embedding\\|backbone"):
        m.embed(images, feature="logits")


def test_batch_with_some_tasks_trains_only_their_heads(vit_cfg):
    m = _module(vit_cfg)
    opt = m.configure_optimizers()["optimizer"]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    total, losses, _ = m.compute_losses(make_batch(("fashion_mnist",)))
    assert set(losses) == {"embedding/fashion_mnist", "clf/fashion"}
    total.backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert grads["heads.weak_label.weight"] is None
    assert grads["heads.embedding.proxies.weak_label"] is None
    assert grads["heads.classifiers.fashion.weight"].abs().sum() > 0
    assert grads["heads.embedding.proxies.fashion_mnist"].abs().sum() > 0
    opt.step()
    after = m.state_dict()
    assert torch.equal(after["heads.weak_label.weight"], before["heads.weak_label.weight"])
    assert torch.equal(after["heads.embedding.proxies.weak_label"], before["heads.embedding.proxies.weak_label"])
    assert not torch.equal(after["heads.classifiers.fashion.weight"], before["heads.classifiers.fashion.weight"])


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_every_parameter_gets_a_gradient_when_all_tasks_present(arch):
    m = _module(tiny_config(arch=arch))
    total, losses, _ = m.compute_losses(make_batch())
    assert len(losses) == 4
    total.backward()
    assert [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None] == []
    zero = [n for n, p in m.named_parameters() if p.requires_grad and not p.grad.abs().sum()]
    if arch == "vit":
        assert zero == []
    else:  # timm zero-initialises the last BatchNorm scale of each residual branch: its convs start at 0 grad
        assert zero and all(n.startswith("backbone.layer") and ".bn2." not in n for n in zero)


@pytest.mark.parametrize("seed", [0, 1])
def test_one_optimisation_step_reduces_each_loss(seed):
    # A step small enough for the first-order regime (cosine logits / 0.05 are steep at 1e-3).
    m = _module(tiny_config("optim.lr=1e-4"), seed=seed)
    batch = make_batch(batch_size=8, seed=seed)
    opt = m.configure_optimizers()["optimizer"]
    _, before, _ = m.compute_losses(batch)
    total = sum(before[s.name] * s.weight for s in m.tasks)
    opt.zero_grad()
    total.backward()
    opt.step()
    with torch.no_grad():
        _, after, _ = m.compute_losses(batch)
    for name in before:
        assert after[name] < before[name], name


def test_loss_weights_scale_the_total():
    cfg = tiny_config("tasks.weak_label.weight=2.0", "tasks.classifiers.fashion.weight=0.5")
    m = _module(cfg)
    total, losses, _ = m.compute_losses(make_batch())
    expected = 2.0 * losses["weak_label"] + losses["embedding/weak_label"] + losses["embedding/fashion_mnist"]
    expected = expected + 0.5 * losses["clf/fashion"]
    assert torch.allclose(total, expected)


def test_bad_target_shape_is_named(vit_cfg):
    m = _module(vit_cfg)
    batch = make_batch()
    batch["weak_label"]["target"] = batch["weak_label"]["target"][:, :5]
    with pytest.raises(ValueError, match=r"batch\['weak_label'\]\['target'\].*\[4, 12\]"):
        m.compute_losses(batch)
    with pytest.raises(ValueError, match="nothing to train"):
        m.compute_losses({"other": make_batch(("fashion_mnist",))["fashion_mnist"]})


def test_missing_num_classes_is_named():
    with pytest.raises(ValueError, match="fashion_mnist"):
        MultiTaskModule(tiny_config(), {"weak_label": 12})


def test_no_weight_decay_on_norms_biases_pos_embed_cls_token(vit_cfg):
    m = _module(vit_cfg)
    opt = m.configure_optimizers()["optimizer"]
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    params = dict(m.named_parameters())
    for name in ("backbone.pos_embed", "backbone.cls_token", "backbone.blocks.0.norm1.weight", "backbone.norm.bias"):
        assert wd_of[id(params[name])] == 0.0, name
    for name in ("backbone.blocks.0.attn.qkv.bias", "heads.weak_label.bias"):
        assert wd_of[id(params[name])] == 0.0, name
    for name in ("backbone.blocks.1.mlp.fc1.weight", "backbone.patch_embed.proj.weight", "heads.weak_label.weight"):
        assert wd_of[id(params[name])] == pytest.approx(0.05), name
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(1 for p in m.parameters() if p.requires_grad)


def test_layer_decay_scales_lr_by_depth():
    m = _module(tiny_config("optim.layer_decay=0.5", "optim.lr=0.01"))
    opt = m.configure_optimizers()["optimizer"]
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    params = dict(m.named_parameters())
    # 2 blocks: stem = layer 0, blocks.0 = 1, blocks.1 and the final norm = 2, heads = 3 (top, scale 1)
    expected = {
        "backbone.pos_embed": 0.01 * 0.5**3,
        "backbone.blocks.0.attn.qkv.weight": 0.01 * 0.5**2,
        "backbone.blocks.1.attn.qkv.weight": 0.01 * 0.5,
        "backbone.norm.weight": 0.01 * 0.5,
        "heads.weak_label.weight": 0.01,
        "heads.embedding.proxies.fashion_mnist": 0.01,
    }
    for name, lr in expected.items():
        assert lr_of[id(params[name])] == pytest.approx(lr), name


def test_warmup_cosine_values_at_known_steps():
    f = lambda s: warmup_cosine(s, warmup_steps=10, total_steps=110, min_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)
    assert warmup_cosine(50, 10, 110, 0.1, schedule="constant") == 1.0


def test_scheduler_drives_optimizer_lr_per_step():
    m = _module(tiny_config("optim.lr=0.1", "optim.min_lr=0.01", "optim.warmup_steps=4", "trainer.max_steps=14"))
    conf = m.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(15):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.025)
    assert lrs[3] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(0.01 + 0.09 * 0.5)
    assert lrs[14] == pytest.approx(0.01)


def test_flop_counter_known_values():
    linear = torch.nn.Linear(8, 4)
    with FlopCounterMode(display=False) as counter:
        linear(torch.randn(3, 8))
    assert counter.get_total_flops() == 2 * 3 * 8 * 4
    # ViT-B/16 at 224: timm lists 17.58 GMACs = 35.2 GFLOPs; ResNet-50: 4.11 GMACs.
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", num_classes=0)
        resnet = timm.create_model("resnet50", num_classes=0)
    for model, gmacs in ((vit, 17.58), (resnet, 4.11)):
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 224, 224, device="meta"))
        assert counter.get_total_flops() == pytest.approx(2 * gmacs * 1e9, rel=0.01)


def test_module_flop_count_is_backbone_plus_heads(vit_cfg):
    m = _module(vit_cfg)
    with FlopCounterMode(display=False) as counter:
        m.backbone(torch.randn(1, 3, 32, 32))
    backbone = counter.get_total_flops()
    # CPU's fused attention kernel is not in FlopCounterMode's table, the meta twin's is:
    # per block QK^T and AV over 16 patches + the class token, width 192.
    attention = 2 * (2 * 2 * 17 * 17 * 192)
    heads = 2 * 192 * 12 + 2 * 192 * 256 + 2 * 256 * (12 + 10) + 2 * 192 * 10
    assert m.count_flops() == backbone + attention + heads


def test_mfu_and_device_peaks():
    assert device_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert device_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert device_peak_flops("NVIDIA H200") == 989e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert device_peak_flops("Some CPU") is None
    # 3,000 img/s of ViT-B/16 (35.2 GFLOPs forward) on one H100: about 32 % MFU
    assert mfu(35.2e9, 3000, 989e12) == pytest.approx(0.32, abs=0.005)


def test_weak_label_metrics_known_values():
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.0], [0.2, 0.8, 0.1, 0.0], [0.3, 0.4, 0.5, 0.0]])
    positives = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    # mAP over the labels with positives (0, 1, 2): label 0 and 1 rank their positive first (AP 1); label 2
    # ranks its positive (row 1, score 0.1) third (AP 1/3); label 3 has no positive and is not scored -> 7/9
    for exact in (False, True):  # the bounded binned state and the exact one agree on well-separated scores
        metric = WeakLabelMAP(4, exact=exact)
        metric.update(scores, positives)
        assert metric.compute().item() == pytest.approx(7 / 9)
    # p@1: rows 0 and 1 hit, row 2 has no label and is not scored; p@2: each row has 1 hit in its top 2
    assert precision_at_k(scores, positives, 1).tolist() == [1.0, 1.0]
    assert precision_at_k(scores, positives, 2).tolist() == [0.5, 0.5]
    assert precision_at_k(scores, positives, 3).tolist() == pytest.approx([1 / 3, 2 / 3])


def test_precision_at_k_above_the_label_count_is_not_reported():
    cfg = tiny_config(tasks="weak_label")
    m = MultiTaskModule(cfg, {"weak_label": 3})
    assert "weak_label_p1" in m.val_metrics and "weak_label_p5" not in m.val_metrics  # p@5 of 3 labels: undefined


def test_bce_option_uses_per_label_sigmoids():
    m = _module(tiny_config("tasks.weak_label.loss=bce", tasks="weak_label"))
    batch = make_batch(("weak_label",))
    _, losses, logits = m.compute_losses(batch)
    per_element = torch.nn.functional.binary_cross_entropy_with_logits(
        logits["weak_label"], batch["weak_label"]["target"], reduction="none"
    )
    assert torch.allclose(losses["weak_label"], per_element.sum(dim=1).mean())  # sum over labels, mean over rows


def test_weak_label_head_bias_init():
    # BCE: -log(C) by default, so the initial sigmoid is 1/C (12 labels here); softmax: 0; an explicit value wins.
    bce = _module(tiny_config("tasks.weak_label.loss=bce", tasks="weak_label"))
    assert torch.allclose(bce.heads["weak_label"].bias, torch.full((12,), -math.log(12)))
    assert torch.allclose(bce.heads["weak_label"].bias.sigmoid(), torch.full((12,), 1 / 13))
    softmax = _module(tiny_config(tasks="weak_label"))
    assert torch.equal(softmax.heads["weak_label"].bias, torch.zeros(12))
    big_vision = _module(tiny_config("tasks.weak_label.loss=bce", "tasks.weak_label.init_bias=-10", tasks="weak_label"))
    assert torch.equal(big_vision.heads["weak_label"].bias, torch.full((12,), -10.0))


def test_retrieval_head_layout_zhai_wu(vit_cfg):
    # LayerNorm without affine parameters, projection without bias, unit-norm output (Zhai and Wu, BMVC 2019).
    m = _module(vit_cfg)
    head = m.heads["embedding"]
    assert isinstance(head.norm, torch.nn.LayerNorm) and not head.norm.elementwise_affine
    assert list(dict(head.norm.named_parameters())) == []
    assert head.proj.bias is None
    assert sorted(k for k in m.state_dict() if k.startswith("heads.embedding.") and "proxies" not in k) == [
        "heads.embedding.proj.weight"
    ]
    feats = torch.randn(5, 192) * 7 + 3
    out = head(feats)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)
    # The LayerNorm makes the embedding invariant to a per-sample shift and scale of the feature.
    assert torch.allclose(head(feats * 4 - 2), out, atol=1e-5)


def test_proxies_are_excluded_from_weight_decay(vit_cfg):
    m = _module(vit_cfg)
    opt = m.configure_optimizers()["optimizer"]
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    params = dict(m.named_parameters())
    for name in ("heads.embedding.proxies.weak_label", "heads.embedding.proxies.fashion_mnist"):
        assert wd_of[id(params[name])] == 0.0, name
    assert wd_of[id(params["heads.embedding.proj.weight"])] == pytest.approx(0.05)


def test_config_that_does_not_fit_the_schema_is_named():
    with pytest.raises(ValueError, match="model.nme"):
        MultiTaskModule({"model": {"nme": "resnet50"}}, NUM_CLASSES)


def test_resnet10_lowres_keeps_the_resolution_of_small_images():
    from configs.compose import compose

    cfg = compose(["experiment=fashion_mnist_cpu", "logger=none"])
    model = create_backbone(cfg.model, int(cfg.data.img_size))
    assert cfg.model.name == "resnet10_lowres" and feature_dim(model) == 256
    x = torch.randn(2, 3, 28, 28)
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)
    assert model.conv1.out_channels == 32 and model.layer1[0].downsample is None  # stem as wide as stage 1
    assert model.forward_features(x).shape == (2, 256, 4, 4)  # a stock timm ResNet ends at 1x1 here
    assert model(x).shape == (2, 256)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("resnet10_lowres", pretrained=True)


# ------------------------------------------------------------------------------ task objects


def test_heads_draw_their_weights_in_a_fixed_order_and_are_stored_by_kind():
    """Same seed, same initial heads as before the task objects (weak-label, classifiers, embedding), and the
    state-dict order of existing checkpoints (weak_label, embedding, classifiers)."""
    from lit_modules.heads import EmbeddingHead
    from lit_modules.tasks import build_heads, build_tasks

    tasks_cfg = tiny_config()["tasks"]
    torch.manual_seed(3)
    heads = build_heads(build_tasks(tasks_cfg), 8, NUM_CLASSES)
    torch.manual_seed(3)
    weak, fashion = torch.nn.Linear(8, 12), torch.nn.Linear(8, 10)
    embedding = EmbeddingHead(8, 256, {"weak_label": 12, "fashion_mnist": 10})
    assert list(heads) == ["weak_label", "embedding", "classifiers"]
    assert torch.equal(heads["weak_label"].weight, weak.weight)
    assert torch.equal(heads["classifiers"]["fashion"].weight, fashion.weight)
    assert torch.equal(heads["embedding"].proj.weight, embedding.proj.weight)
    assert torch.equal(heads["embedding"].proxies["fashion_mnist"], embedding.proxies["fashion_mnist"])


def test_a_new_task_kind_is_one_class_and_a_registry_entry(monkeypatch):
    """A kind the module has never heard of trains, validates and logs through the Task interface alone."""
    import torch.nn.functional as F
    from fixtures_model import combined_loader, cpu_trainer
    from torchmetrics import MeanMetric

    from lit_modules.tasks import TASK_KINDS, Task

    class ParityTask(Task):  # is a Fashion-MNIST class id even or odd?
        kind = "parity"

        @classmethod
        def from_config(cls, tasks_cfg):
            return [cls("parity/fashion_mnist", "fashion_mnist", 0.5, "parity", {})]

        @classmethod
        def build_heads(cls, tasks, in_features, num_classes):
            return {"parity": torch.nn.Linear(in_features, 2)}

        def logits(self, heads, feats, cache):
            return heads["parity"](feats)

        def loss(self, logits, target):
            return F.cross_entropy(logits.float(), target % 2)

        def make_metrics(self, num_classes):
            return {"parity_acc": MeanMetric()}

        def update(self, metrics, logits, target):
            metrics["parity_acc"].update((logits.argmax(1) == target % 2).float())
            return {"parity/acc": metrics["parity_acc"]}

    monkeypatch.setitem(TASK_KINDS, "parity", ParityTask)
    m = _module(tiny_config())
    assert "heads.parity.weight" in m.state_dict() and "parity_acc" in m.val_metrics
    batch = make_batch()
    total, losses, logits = m.compute_losses(batch)
    target = batch["fashion_mnist"]["target"]
    assert torch.equal(losses["parity/fashion_mnist"], F.cross_entropy(logits["parity/fashion_mnist"], target % 2))
    others = sum(loss for name, loss in losses.items() if name != "parity/fashion_mnist")
    torch.testing.assert_close(total, others + 0.5 * losses["parity/fashion_mnist"])

    val = combined_loader(("fashion_mnist",), n=8, seed=5).iterables["fashion_mnist"]
    got = cpu_trainer(1, limit_val_batches=None).validate(m, dataloaders={"fashion_mnist": val}, verbose=False)
    with torch.no_grad():
        m.eval()
        hits = [(m.heads["parity"](m(b["image"])).argmax(1) == b["target"] % 2).float() for b in val]
    assert got[0]["val/parity/acc"] == pytest.approx(torch.cat(hits).mean().item())
