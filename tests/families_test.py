"""The model interface (`models.base.BaseModel`) and its T5 implementation,
against independent computations: the hand-written teacher-forced log-softmax,
the module's own greedy decoding and the FLOPs formula."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import init_params, teacher_forced_logps
from tinythinker_jax import decoding, families
from tinythinker_jax.families import EncoderDecoderModel
from tinythinker_jax.models import base, flops, t5


def test_the_model_is_found_from_its_config_meta_and_hf_folder(tiny_config):
  model = families.from_config(tiny_config)
  assert isinstance(model, EncoderDecoderModel) and model.config == tiny_config
  assert families.from_config(model) is model
  assert families.from_json({"model": model.to_json()}) == model
  # Meta written before families existed holds a bare T5 config.
  legacy = {"model_config": dataclasses.asdict(tiny_config)}
  assert families.from_json(legacy) == model
  assert families.hf_family({"model_type": "t5"}) is EncoderDecoderModel
  assert families.hf_family({"model_type": "gpt2"}).family == "decoder_only"
  assert families.hf_family({"model_type": "qwen2"}).family == "decoder_only"
  with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
    families.hf_family({"model_type": "bert"}, "/m/config.json")
  with pytest.raises(ValueError, match="unknown model family 'rnn'"):
    families.from_json({"model": {"family": "rnn", "config": {}}})
  with pytest.raises(ValueError, match="MODEL_CONFIG: dict is not a known model config"):
    families.from_config({})
  assert model.replace(dropout_rate=0.3).dropout_rate == 0.3
  with pytest.raises(TypeError):
    base.BaseModel(tiny_config)  # abstract: every family implements the interface


def test_token_logps_and_decoding_through_the_interface(tiny_config):
  model = EncoderDecoderModel(tiny_config)
  params = jax.device_get(init_params(tiny_config, 3))
  prompt, target = [5, 9, 17, 4, 1], [22, 7, 1]
  logps, logits = jax.jit(model.token_logps)(
      params, jnp.array([prompt + [0] * 3]), jnp.array([target + [0] * 2]))
  hand = teacher_forced_logps(tiny_config, params, prompt, target)
  np.testing.assert_allclose(np.asarray(logps)[0, :3], hand, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(logps)[0, 3:] == 0) and logits.shape == (1, 5, 128)
  inputs = jnp.array([prompt + [0] * 3, [8, 8, 1] + [0] * 5])
  ours = jax.jit(lambda p, x: model.decode(p, x, max_length=6))(params, inputs)
  direct = decoding.greedy_decode(t5.T5(tiny_config), params, inputs, max_length=6)
  np.testing.assert_array_equal(ours.tokens, direct.tokens)
  np.testing.assert_allclose(ours.token_logprobs, direct.token_logprobs, rtol=1e-6)
  beams = jax.jit(lambda p, x: model.decode(p, x, max_length=4, num_beams=3))(params,
                                                                            inputs)
  search = decoding.beam_search(t5.T5(tiny_config), params, inputs, beam_size=3,
                                max_length=4)
  np.testing.assert_array_equal(beams.tokens, search.tokens[:, 0])
  np.testing.assert_allclose(beams.token_logprobs.sum(-1), search.scores[:, 0], rtol=1e-6)
  # FLOPs are the formula's.
  assert model.train_step_flops({"encoder_input_tokens": (4, 8),
                                 "decoder_target_tokens": (4, 6)}) == \
      flops.train_step_flops(tiny_config, 4, 8, 6)
  assert model.decode_steps_flops(8, 3) == flops.decode_steps_flops(tiny_config, 8, 3)


def test_one_registry_style_names_what_it_knows():
  """Families, Hugging Face model types and weight sources are registries:
  an unknown name is an error that lists the known ones (and a KeyError, so
  `get` with a default works); a name registered twice is an error."""
  from tinythinker_jax import registries, weights
  assert list(families.FAMILIES) == ["encoder_decoder", "decoder_only"]
  with pytest.raises(registries.UnknownName,
                     match=r"unknown model family 'rnn' \(known: encoder_decoder, decoder_only\)"):
    families.FAMILIES["rnn"]
  assert families.FAMILIES.get("rnn") is None
  with pytest.raises(ValueError, match="'t5' is registered already"):
    families.HF_MODEL_TYPES.register("t5", EncoderDecoderModel)
  assert list(weights.SOURCES)[-1] == "a model dir with checkpoints"
  # Formats, datasets, teachers, baselines and verbs the same way.
  from tinythinker_jax.cli import main
  from tinythinker_jax.data import datasets
  from tinythinker_jax.reasoning import registry
  from tinythinker_jax.stages import baselines, teach
  assert list(teach.TEACHERS) == ["openai", "local", "rule_based", "recorded"]
  with pytest.raises(ValueError, match=r"teach_dataset.teacher='gpt': unknown teacher 'gpt' "
                                       r"\(known: openai, local, rule_based, recorded\)"):
    teach.teach_dataset(dataset="coin_flip", output_dir="/nonexistent", teacher="gpt")
  with pytest.raises(ValueError, match=r"STUDENT_FORMATS='cot': unknown student format 'cot' "
                                       r"\(known: vanilla, finetune_cot, "):
    registry.get("cot", "STUDENT_FORMATS")
  with pytest.raises(KeyError, match="unknown dataset 'nope' \\(known: csqa, obqa, "):
    datasets.get_spec("nope")
  assert list(baselines.BASELINES) == ["continued", "rft"] and "evaluate" in main.BINARIES
  assert families.gguf_family("x.gguf").family == "decoder_only"
  with pytest.raises(ValueError, match="encoder_decoder models are not read from GGUF"):
    EncoderDecoderModel.load_gguf("x.gguf")


def test_weights_load_names_every_source_it_tried(tmp_path):
  from tinythinker_jax import weights
  with pytest.raises(FileNotFoundError,
                     match=r"neither a GGUF file, a Hugging Face folder \(config.json\), a "
                           r"t5x checkpoint nor a model dir with checkpoints"):
    weights.load(tmp_path / "nothing")
