"""Networks from plain data: a checkpoint or config can name a registered MONAI network, nothing else.

Every hostile config here carries a payload that would write a file (``torch.save``) if anything
in it were instantiated; each test checks the file is not there afterwards. The two payloads of
the known attacks are first shown to be live: Hydra's ``instantiate`` (what built networks
before) does write the file.
"""

from __future__ import annotations

import pytest
import torch
from inference_cases import make_checkpoint

from wmhseg.errors import CheckpointError
from wmhseg.inference.predictor import Predictor
from wmhseg.networks import NETWORK_NAMES, build_network, network_class

BASE = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2, "out_channels": 2,
        "channels": [4, 8], "strides": [2], "num_res_units": 0}


def _save(marker) -> dict:
    """A nested Hydra config that calls ``torch.save([1], marker)`` when instantiated."""
    return {"_target_": "torch.save", "_args_": [[1], str(marker)]}


def _attacks(marker) -> dict[str, tuple[dict, str]]:
    """name -> (network config, the part of the error message that says why it is refused)."""
    save = _save(marker)
    return {
        "nested_target": ({**BASE, "act": save}, "nested '_target_'"),
        "nested_in_list": ({**BASE, "act": ["prelu", save]}, "nested '_target_'"),
        "dotted_path_unet": ({"_target_": "monai.networks.nets.unet.torch.save", "_args_": save["_args_"]},
                             "is not allowed; a network is one of"),
        "dotted_path_package": ({"_target_": "monai.networks.nets.UNet.__init__.__globals__.torch.save",
                                 "_args_": save["_args_"]}, "is not allowed; a network is one of"),
        "outside_monai": ({"_target_": "torch.save", "obj": [1], "f": str(marker)}, "is not allowed; a network is one of"),
        "partial": ({**BASE, "_partial_": True, "act": save}, "_partial_"),
        "args": ({"_target_": "monai.networks.nets.UNet", "_args_": [3, 2, 2, [4, 8], [2]], "act": save}, "_args_"),
        "recursive_flag": ({**BASE, "_recursive_": True, "norm": save}, "_recursive_"),
        "unknown_key": ({**BASE, "callback": save}, r"no parameter\(s\) \['callback'\]"),
        "non_plain_value": ({**BASE, "channels": torch.tensor([4, 8]), "act": save}, "Tensor is not a plain value"),
        "target_not_a_string": ({"_target_": ["torch.save"], **{k: v for k, v in BASE.items() if k != "_target_"}},
                                "of type list"),
    }


@pytest.mark.parametrize("name", ["nested_target", "dotted_path_unet"])
def test_the_payloads_are_live_under_hydra_instantiate(tmp_path, name):
    """What the old code did with these configs: instantiate writes the attacker's file."""
    from hydra.utils import instantiate

    marker = tmp_path / "pwned"
    config, _ = _attacks(marker)[name]
    payload = config["act"] if name == "nested_target" else config
    instantiate(payload)
    assert marker.is_file()


@pytest.mark.parametrize("name", list(_attacks("x")))
def test_build_network_refuses_attacks(tmp_path, name):
    marker = tmp_path / "pwned"
    config, why = _attacks(marker)[name]
    with pytest.raises(CheckpointError, match=why):
        build_network(config, source="evil.ckpt: network")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["nested_target", "dotted_path_unet", "partial", "unknown_key"])
def test_checkpoint_carrying_an_attack_is_refused(tmp_path, name):
    """The same configs inside a real checkpoint file: loading refuses it and names the file."""
    marker = tmp_path / "pwned"
    path = make_checkpoint(tmp_path / "model.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["wmhseg"]["network"], why = _attacks(marker)[name]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"model.ckpt: network.*{why}"):
        Predictor.from_checkpoint(path)
    assert not marker.exists()


def test_missing_required_parameter_and_bad_values_are_named():
    with pytest.raises(CheckpointError, match=r"needs the parameter\(s\) \['strides'\]"):
        build_network({k: v for k, v in BASE.items() if k != "strides"})
    with pytest.raises(CheckpointError, match="cannot build UNet"):
        build_network({**BASE, "channels": [4], "strides": [2, 2]})
    with pytest.raises(CheckpointError, match="must be a mapping"):
        build_network(["UNet"])  # type: ignore[arg-type]


def test_written_spellings_build_the_same_network():
    """Checkpoints store ``monai.networks.nets.UNet``; the short and defining-module names work too."""
    torch.manual_seed(0)
    reference = build_network(BASE)
    for target in ("UNet", "monai.networks.nets.unet.UNet"):
        net = build_network({**BASE, "_target_": target})
        assert type(net) is type(reference)
        assert {k: v.shape for k, v in net.state_dict().items()} == {
            k: v.shape for k, v in reference.state_dict().items()}


def test_every_registered_name_resolves_to_a_monai_network():
    for name in NETWORK_NAMES:
        cls = network_class(name)
        assert cls.__module__.startswith("monai.networks.nets.") and cls.__name__ == name
        assert issubclass(cls, torch.nn.Module)
