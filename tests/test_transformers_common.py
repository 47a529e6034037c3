"""transformers' own common model tests, run against MineVaeModel.

A `PreTrainedModel` is trusted when it passes the tests every transformers model passes: `ModelTesterMixin`
(tests/test_modeling_common.py) and `GenerationTesterMixin` (tests/generation/test_utils.py). Those live in
transformers' source, not in its wheel, so this module imports them from the source distribution of the installed
release that `python tests/transformers_sources.py` fetches (the README's test command runs it), or from a source
tree named by the environment variable TRANSFORMERS_TESTS_DIR.
Nothing of transformers' test code is copied here.

The source distribution on PyPI ships tests/test_modeling_common.py but not tests/generation/ (nor
tests/exporters/), so from it `ModelTesterMixin` runs and `GenerationTesterMixin` cannot: the one common test that
checks the generation tests ran says so as a skip (tests/test_generation.py covers generate). Pointed at a git
checkout of the release, the module runs both mixins.

Three tiny configurations run the mixins: BERT -> GPT-2 with z as memory and embedding (the default "both"),
BERT -> Llama (grouped key/value heads, rotary positions), and BERT -> GPT-2 with z added to the embeddings only.
Every common test passes or is named in `DEVIATIONS` below with the reason it cannot run as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import unittest
import unittest.mock
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
from transformers import BertConfig, GPT2Config, LlamaConfig

from mine_vae import MineVaeConfig, MineVaeModel, MineVaeOutput

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transformers_sources import FETCH_COMMAND, SOURCE_VARIABLE, source_root  # noqa: E402

_PACKAGE = "transformers_source_tests"  # transformers' tests/ imported under this name: ours is also "tests"
_HOW = (
    f"run `{FETCH_COMMAND}` (the README's test command does), or point {SOURCE_VARIABLE} at a transformers source tree"
)


def _source_problem(root: str | None) -> str | None:
    """Why transformers' common tests cannot be imported from `root`, in one line; None when they can."""
    if not root:
        return f"transformers' test sources are not here, so its common model tests cannot run: {_HOW}"
    tests = Path(root, "tests")
    if not (tests / "test_modeling_common.py").is_file():
        return f"{SOURCE_VARIABLE}={root} holds no tests/test_modeling_common.py (a transformers source tree): {_HOW}"
    version = _source_version(Path(root))
    if version is not None and version != transformers.__version__:
        return (
            f"{SOURCE_VARIABLE}={root} is transformers {version}'s source but transformers "
            f"{transformers.__version__} is installed; the tests must match the release: {_HOW}"
        )
    return None


def _source_version(root: Path) -> str | None:
    """The release a source tree is of: PKG-INFO in a source distribution, the package's __init__ in a checkout."""
    pkg_info = root / "PKG-INFO"
    if pkg_info.is_file():
        for line in pkg_info.read_text(encoding="utf-8").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    init = root / "src" / "transformers" / "__init__.py"
    if init.is_file():
        for line in init.read_text(encoding="utf-8").splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    return None


def _import_source_tests(root: str) -> tuple[type, type | None]:
    """(ModelTesterMixin, GenerationTesterMixin or None) from the source tree's tests/.

    transformers' tests/ is imported as a package of its own name, so its relative imports resolve inside it. The
    source distribution on PyPI ships tests/test_modeling_common.py but not the tests/generation/ and
    tests/exporters/ packages it imports at the top; where those are missing (only there), the two mixins it takes
    from them are empty classes, and `test_generation_tester_mixin_inheritance` (transformers' own check that a
    model able to generate runs the generation tests) is skipped with the reason instead of passing. A git checkout
    of the release has both packages and runs both mixins.
    """
    tests = Path(root, "tests")
    if _PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_loader(_PACKAGE, loader=None, is_package=True)
        package = importlib.util.module_from_spec(spec)
        package.__path__ = [str(tests)]
        sys.modules[_PACKAGE] = package
    generation_shipped = (tests / "generation" / "test_utils.py").is_file()
    for folder, module, mixin in (
        ("generation", "test_utils", "GenerationTesterMixin"),
        ("exporters", "test_export", "ExportTesterMixin"),
    ):
        if (tests / folder / f"{module}.py").is_file():
            continue
        name = f"{_PACKAGE}.{folder}"
        sys.modules.setdefault(name, types.ModuleType(name))
        stand_in = types.ModuleType(f"{name}.{module}")
        setattr(stand_in, mixin, type(mixin, (), {"__doc__": "Not shipped in this source tree."}))
        sys.modules.setdefault(f"{name}.{module}", stand_in)
    common = importlib.import_module(f"{_PACKAGE}.test_modeling_common")
    generation = importlib.import_module(f"{_PACKAGE}.generation.test_utils") if generation_shipped else None
    return common.ModelTesterMixin, (generation.GenerationTesterMixin if generation is not None else None)


_PROBLEM = _source_problem(source_root())
# Torch on one thread (conftest.py says why): the common tests run hundreds of tiny forward passes.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_transformers_test_sources_are_available() -> None:
    """Fails, with the way to get them, when transformers' test sources are not there: never a silent pass."""
    if _PROBLEM is not None:
        pytest.fail(_PROBLEM, pytrace=False)


if _PROBLEM is None:
    ModelTesterMixin, GenerationTesterMixin = _import_source_tests(source_root())
else:  # only the failing test above is collected
    ModelTesterMixin = GenerationTesterMixin = None


# ---------------------------------------------------------------------------------------------------------------------
# The one list of common tests not run as they are, with the reason: every other common test must pass.
# ---------------------------------------------------------------------------------------------------------------------
ALL_CONFIGS = ("gpt2_both", "llama_both", "gpt2_embedding")
MEMORY_CONFIGS = ("gpt2_both", "llama_both")
BATCH_STATISTICS = ("kl_per_dimension", "mi_lower_bound")


@dataclass(frozen=True)
class Deviation:
    """A common test that cannot run as it is, in the configurations named: skipped with `reason`; or, with
    `without`, run on `forward` outputs lacking those fields; or, with `settings`, run with those of the mixin's own
    switches set (the rest of the test unchanged)."""

    test: str
    reason: str
    configs: tuple[str, ...] = ALL_CONFIGS
    without: tuple[str, ...] = ()
    settings: tuple[tuple[str, object], ...] = ()


_UNTRAINED_BY_THE_LOSS = (
    "not every parameter gets a gradient from the loss, by design: the MI critic is held fixed in forward and "
    "trained by its own step (critic_loss), and the encoder's pooler is unused with pooling='mean'; the test runs "
    "with the mixin's test_all_params_have_gradient switched off, every other check kept"
)
_OUTER_FLAG = (
    "with z in the decoder cache, activation checkpointing clears the decoder's outer `gradient_checkpointing` flag, "
    "whose only effect there is to drop the cache (and so z); the layers are checkpointed, as "
    "test_training_gradient_checkpointing checks"
)

DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "test_batching_equivalence",
        "kl_per_dimension (each latent dimension's KL averaged over the batch, what free bits act on) and "
        "mi_lower_bound (the critic's bound over the batch's joint and shuffled pairs; none for one example) are "
        "statistics of the batch, not of each example; every per-example output is still compared",
        without=BATCH_STATISTICS,
    ),
    Deviation(
        "test_model_base_model_prefix",
        "MineVaeModel is not a base model plus a head: it is an encoder, the posterior and injection heads and a "
        "decoder that keeps its own language-model head (as EncoderDecoderModel), so it is its own base model",
    ),
    Deviation(
        "test_can_init_all_missing_weights",
        "the GPT-2 decoder's Conv1D weights come out differently from the two initialisation paths this test compares "
        "(built from the config, and materialised from the meta device with no weights), a difference inside "
        "GPT2PreTrainedModel's initialisation of its Conv1D layers; the Llama configuration, whose layers take "
        "transformers' generic initialisation, passes",
        configs=("gpt2_both", "gpt2_embedding"),
    ),
    Deviation("test_gradient_checkpointing_enable_disable", _OUTER_FLAG, configs=MEMORY_CONFIGS),
    Deviation("test_peft_gradient_checkpointing_enable_disable", _OUTER_FLAG, configs=MEMORY_CONFIGS),
    Deviation(
        "test_training_gradient_checkpointing",
        _UNTRAINED_BY_THE_LOSS,
        settings=(("test_all_params_have_gradient", False),),
    ),
    Deviation(
        "test_training_gradient_checkpointing_use_reentrant_false",
        _UNTRAINED_BY_THE_LOSS,
        settings=(("test_all_params_have_gradient", False),),
    ),
    Deviation(
        "test_training_gradient_checkpointing_use_reentrant_true",
        _UNTRAINED_BY_THE_LOSS,
        configs=("gpt2_embedding",),
        settings=(("test_all_params_have_gradient", False),),
    ),
    Deviation(
        "test_training_gradient_checkpointing_use_reentrant_true",
        "torch's reentrant checkpointing differentiates only through the tensors passed to a layer, and z's "
        "key/value position reaches each layer inside the cache object, so its gradient cannot be carried; "
        "non-reentrant checkpointing (transformers' default) is supported and tested",
        configs=MEMORY_CONFIGS,
    ),
)


# ---------------------------------------------------------------------------------------------------------------------
# The model tester: tiny configurations and inputs
# ---------------------------------------------------------------------------------------------------------------------
class MineVaeModelTester:
    """Builds the tiny MineVaeConfig and the inputs the mixins feed `forward` and `generate`."""

    def __init__(
        self,
        parent: unittest.TestCase,
        decoder: str = "gpt2",
        latent_injection: str = "both",
        batch_size: int = 3,
        seq_length: int = 7,
        encoder_vocab_size: int = 128,
        vocab_size: int = 99,
        hidden_size: int = 32,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        latent_size: int = 8,
        is_training: bool = True,
    ):
        self.parent = parent
        self.decoder = decoder
        self.latent_injection = latent_injection
        self.batch_size = batch_size
        # The encoder's and the decoder's inputs have the same length, so every length the mixins check is one.
        self.seq_length = seq_length
        # Two vocabularies, as real pairs have (BERT's and GPT-2's differ); `vocab_size` is the decoder's, the one
        # the model's token embeddings and resize_token_embeddings are about. The encoder's is the larger, so the
        # encoder ids the resize test writes into `input_ids` (new decoder ids) are ids of the encoder as well.
        self.encoder_vocab_size = encoder_vocab_size
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.latent_size = latent_size
        self.is_training = is_training
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2
        # With memory injection every attention row also sees z's key/value position, the first key.
        self.key_length = seq_length + (1 if latent_injection in ("memory", "both") else 0)
        # Two kinds of hidden states come back: the decoder's (`hidden_states`) and the encoder's.
        self.num_hidden_states_types = 2

    def get_config(self) -> MineVaeConfig:
        encoder = BertConfig(
            vocab_size=self.encoder_vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=2 * self.hidden_size,
            max_position_embeddings=64,
            pad_token_id=self.pad_token_id,
        )
        special = {
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }
        if self.decoder == "gpt2":
            decoder = GPT2Config(
                vocab_size=self.vocab_size,
                n_embd=self.hidden_size,
                n_layer=self.num_hidden_layers,
                n_head=self.num_attention_heads,
                n_positions=64,
                **special,
            )
        else:
            decoder = LlamaConfig(
                vocab_size=self.vocab_size,
                hidden_size=self.hidden_size,
                num_hidden_layers=self.num_hidden_layers,
                num_attention_heads=self.num_attention_heads,
                num_key_value_heads=self.num_attention_heads // 2,
                intermediate_size=2 * self.hidden_size,
                max_position_embeddings=64,
                **special,
            )
        return MineVaeConfig(
            encoder=encoder,
            decoder=decoder,
            latent_size=self.latent_size,
            latent_injection=self.latent_injection,
            critic_hidden_size=16,
        )

    def prepare_config_and_inputs_for_common(self) -> tuple[MineVaeConfig, dict[str, torch.Tensor]]:
        from transformers.testing_utils import torch_device

        shape = (self.batch_size, self.seq_length)
        # Ids from 3 on: no special token inside the text (the decoder starts with BOS, as the processor builds it).
        input_ids = torch.randint(3, self.encoder_vocab_size, shape, device=torch_device)
        decoder_input_ids = torch.randint(3, self.vocab_size, shape, device=torch_device)
        decoder_input_ids[:, 0] = self.bos_token_id
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones(shape, dtype=torch.long, device=torch_device),
            "decoder_input_ids": decoder_input_ids,
        }
        return self.get_config(), inputs

    def labels_for(self, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        """The targets of `decoder_input_ids`: each next token, EOS after the last."""
        return torch.cat([decoder_input_ids[:, 1:], torch.full_like(decoder_input_ids[:, :1], self.eos_token_id)], 1)


# ---------------------------------------------------------------------------------------------------------------------
# One test case per configuration
# ---------------------------------------------------------------------------------------------------------------------
def _skipped(reason: str):
    def test(self: unittest.TestCase, *args, **kwargs) -> None:
        self.skipTest(reason)

    return test


def _without_fields(test, fields: tuple[str, ...]):
    """`test` with MineVaeModel.forward's outputs lacking `fields` (the common test's own code unchanged)."""
    forward = MineVaeModel.forward

    def forward_without(model: MineVaeModel, *args, **kwargs):
        outputs = forward(model, *args, **kwargs)
        if isinstance(outputs, MineVaeOutput):
            outputs = MineVaeOutput(**{key: value for key, value in outputs.items() if key not in fields})
        return outputs

    def adapted(self: unittest.TestCase, *args, **kwargs) -> None:
        with unittest.mock.patch.object(MineVaeModel, "forward", forward_without):
            test(self, *args, **kwargs)

    return adapted


def _with_settings(test, settings: tuple[tuple[str, object], ...]):
    """`test` run with the mixin's switches in `settings` set on the test case."""

    def adapted(self: unittest.TestCase, *args, **kwargs) -> None:
        for name, value in settings:
            setattr(self, name, value)
        test(self, *args, **kwargs)

    return adapted


def _apply_deviations(cls: type, config_name: str) -> type:
    """Put each listed deviation in place; a listed name no mixin defines, or one listed twice for a configuration,
    is an error, so the list cannot keep stale or contradictory entries."""
    defined = {name for name in dir(cls) if name.startswith("test_")}
    placed: set[str] = set()
    for deviation in DEVIATIONS:
        name = deviation.test
        if config_name not in deviation.configs:
            continue
        if name in placed:
            raise AssertionError(f"DEVIATIONS lists {name} twice for {config_name}")
        placed.add(name)
        if name not in defined:
            if GenerationTesterMixin is None and name.startswith(_GENERATION_PREFIXES):
                continue  # a generation test, and the generation mixin is not in this source tree
            raise AssertionError(f"DEVIATIONS names {name}, which no common test mixin defines")
        test = getattr(cls, name)
        if deviation.without:
            test = _without_fields(test, deviation.without)
        elif deviation.settings:
            test = _with_settings(test, deviation.settings)
        else:
            test = _skipped(deviation.reason)
        setattr(cls, name, test)
    if GenerationTesterMixin is None:
        # Not a property of the model but of the source tree: say that the generation tests did not run.
        cls.test_generation_tester_mixin_inheritance = _skipped(
            f"transformers {transformers.__version__}'s source distribution does not ship tests/generation/, so "
            f"GenerationTesterMixin did not run; set {SOURCE_VARIABLE} to a git checkout of the release to run it"
        )
    return cls


# Names of GenerationTesterMixin's tests, recognised in DEVIATIONS when that mixin is absent.
_GENERATION_PREFIXES = ("test_generate", "test_greedy", "test_sample", "test_beam", "test_assisted", "test_prompt")


def _test_cases() -> list[type]:
    bases = (ModelTesterMixin, GenerationTesterMixin) if GenerationTesterMixin is not None else (ModelTesterMixin,)
    cases = []
    for config_name, decoder, injection, doc in (
        ("gpt2_both", "gpt2", "both", "BERT -> GPT-2, z as a key/value position in every layer and in every embedding"),
        ("llama_both", "llama", "both", "BERT -> Llama (grouped key/value heads, rotary positions), z as memory too"),
        ("gpt2_embedding", "gpt2", "embedding", "BERT -> GPT-2, z only added to every input embedding"),
    ):
        namespace = {
            "__doc__": doc,
            "__module__": __name__,
            "all_model_classes": (MineVaeModel,),
            # Not a sequence-to-sequence model for transformers: generate() drives the decoder as a decoder-only
            # model and z travels as a model keyword (docs/api.md, "generate").
            "is_encoder_decoder": False,
            # An encoder config and a decoder config under one: the composite-attention tests apply.
            "_is_composite": True,
            # The model is new: its _init_weights must cover every weight (the mixin checks models from 2023 on).
            "test_can_init_all_missing_weights_before_2023": True,
            "setUp": _set_up(decoder, injection),
            "_prepare_for_class": _prepare_for_class,
        }
        name = "MineVae" + "".join(part.capitalize() for part in config_name.split("_")) + "Test"
        cases.append(_apply_deviations(type(name, (*bases, unittest.TestCase), namespace), config_name))
    return cases


def _set_up(decoder: str, injection: str):
    def set_up(self: unittest.TestCase) -> None:
        self.model_tester = MineVaeModelTester(self, decoder=decoder, latent_injection=injection)

    return set_up


def _prepare_for_class(self, inputs_dict: dict, model_class: type, return_labels: bool = False) -> dict:
    # The mixin adds labels for the model classes of transformers' task mappings; this model's are decoder targets.
    inputs = ModelTesterMixin._prepare_for_class(self, inputs_dict, model_class, return_labels=return_labels)
    if return_labels:
        inputs["labels"] = self.model_tester.labels_for(inputs["decoder_input_ids"])
    return inputs


if _PROBLEM is None:
    MineVaeGpt2BothTest, MineVaeLlamaBothTest, MineVaeGpt2EmbeddingTest = _test_cases()
