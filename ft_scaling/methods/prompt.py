"""Prompt tuning (Lester et al. 2021): a trained soft prompt before every example.

    params = {**decoder params (frozen, same paths as the base model), 'prompt': [P, embed]}
    x = [prompt_0 .. prompt_{P-1}, embed(token_0) .. embed(token_{n-1})]   # positions 0..P+n-1
    logits = decoder(x)[:, P:]                                           # token positions only

The wrapper shares the decoder's scope (`nn.share_scope`), so a base checkpoint restores into it
unchanged and the prompt is the one new leaf, with logical axes (prompt, embed). The decoder
prepends the prompt (`prefix_embeddings`), shifts token positions by P, puts the prompt in
segment 1 of every row and slices the logits; a row's padding (segment 0) never sees it.

Cached decoding. Callers pass positions in token coordinates, exactly as for the plain decoder:
  * the cache is created by `model.init(rng, tokens[batch, max_len], decode=True)` on the wrapped
    model; that call prepends the prompt, so the cache holds P + max_len slots;
  * the prefill call (`decode=True, prefill=True`, the default) writes the prompt into slots
    0..P-1 and the n prompt-free tokens into slots P..P+n-1 at RoPE positions P+i;
  * each later call (`decode=True, prefill=False`) adds no prompt; its `positions` (required)
    are token coordinates i and the wrapper adds P, so RoPE sees P+i as in the full forward pass.

Packing cannot work (the prompt would sit in the first segment only), so `validate` refuses it.
"""

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

import gin
from ft_scaling.methods import base
from ft_scaling.models import axes, decoder

PROMPT_PARAM = "prompt"
INITS = ("vocab", "uniform")


def _sample_vocab_embeddings(rng, embedding, prompt_length: int, sample_range, multiplier=None):
    """Rows of the (scaled) embedding for P token ids drawn uniformly from `sample_range`.

    SentencePiece ids are ordered by piece score, so the low ids approximate Lester et al.'s
    "5,000 most common tokens"; the first ids are special (pad, eos, unk) and are skipped.
    """
    vocab, embed_dim = embedding.shape
    low, high = min(sample_range[0], vocab - 1), min(sample_range[1], vocab)
    ids = jax.random.randint(rng, (prompt_length,), low, high)
    # The decoder scales token embeddings (by sqrt(embed) unless ModelConfig.embed_scale is
    # 'none') before the blocks, and prefix embeddings join them after that scaling: copy in
    # the same space. `multiplier` None is the paper's sqrt(embed).
    scale = jnp.sqrt(jnp.float32(embed_dim)) if multiplier is None else multiplier
    return jnp.take(embedding.astype(jnp.float32), ids, axis=0) * scale


class PromptWrapper(nn.Module):
    """A decoder with a trained soft prompt; same call signature as `Decoder`.

    Attributes:
      base: the decoder (its params stay at the top level of the tree).
      prompt_length: P, the number of prompt vectors.
      init_method: 'vocab' (copies of sampled token embeddings) or 'uniform'.
      uniform_scale: half-width of the uniform init (Lester et al.: 0.5).
      vocab_sample_range: [low, high) token ids sampled by the 'vocab' init.
    """

    base: nn.Module
    prompt_length: int
    init_method: str = "vocab"
    uniform_scale: float = 0.5
    vocab_sample_range: tuple[int, int] = (3, 5003)

    def setup(self):
        nn.share_scope(self, self.base)
        embed_dim = self.base.config.embed_dim
        self.prompt = self.param(
            PROMPT_PARAM,
            nn.with_logical_partitioning(self._init_prompt, (axes.PROMPT, axes.EMBED)),
            (self.prompt_length, embed_dim),
        )

    def _init_prompt(self, rng, shape):
        if self.init_method == "vocab":
            multiplier = decoder.embedding_multiplier(self.base.config)
            return _sample_vocab_embeddings(
                rng, self.base.embedding, shape[0], self.vocab_sample_range, multiplier
            )
        scale = self.uniform_scale
        return jax.random.uniform(rng, shape, jnp.float32, -scale, scale)

    def embed(self, tokens):
        return self.base.embed(tokens)

    def __call__(
        self,
        tokens,
        segment_ids=None,
        positions=None,
        *,
        prefix_embeddings=None,
        deterministic: bool = True,
        decode: bool = False,
        prefill: bool = True,
    ):
        """Logits [batch, length, vocab] of the tokens; see the module docstring for decoding."""
        if decode and not prefill:
            if positions is None:
                raise ValueError("prompt tuning: decode steps after prefill need `positions`")
            positions = positions + self.prompt_length
            prefix = prefix_embeddings
        else:
            prefix = self.prompt
            if prefix_embeddings is not None:  # another prefix goes after the soft prompt
                batch = tokens.shape[0]
                prompt = jnp.broadcast_to(prefix, (batch, *prefix.shape))
                if prefix_embeddings.ndim == 2:
                    prefix_embeddings = jnp.broadcast_to(
                        prefix_embeddings, (batch, *prefix_embeddings.shape)
                    )
                prefix = jnp.concatenate([prompt, prefix_embeddings.astype(prompt.dtype)], 1)
        return self.base(
            tokens,
            segment_ids,
            positions,
            prefix_embeddings=prefix,
            deterministic=deterministic,
            decode=decode,
            prefill=prefill,
        )


def _multiplier_of(model: nn.Module):
    config = getattr(model, "config", None)
    return None if config is None else decoder.embedding_multiplier(config)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PromptTuning(base.Method):
    """Trains only the soft prompt; the decoder is frozen.

    Attributes:
      prompt_length: P (paper default 100, swept 50-600; PAPER.md §3).
      init_method: 'vocab' (paper and default: copies of sampled vocabulary embeddings) or
        'uniform' (U[-uniform_scale, uniform_scale]).
      uniform_scale: half-width of the uniform init.
      vocab_sample_range: [low, high) of the token ids the 'vocab' init samples.
      allow_longer_than_sequence: accept P >= the summed feature lengths. Off by default to
        catch typos; the paper's held-out |P| = 600 with 256 + 256 token features (PAPER.md
        §2-3) needs it on.
    """

    name = "prompt"
    prompt_length: int = 100
    init_method: str = "vocab"
    uniform_scale: float = 0.5
    vocab_sample_range: tuple[int, int] = (3, 5003)
    allow_longer_than_sequence: bool = False

    def __post_init__(self):
        object.__setattr__(self, "vocab_sample_range", tuple(self.vocab_sample_range))
        if isinstance(self.prompt_length, bool) or not isinstance(self.prompt_length, int):
            raise ValueError(
                f"PromptTuning.prompt_length must be an integer, got {self.prompt_length!r}"
            )
        if self.prompt_length <= 0:
            raise ValueError(
                f"PromptTuning.prompt_length must be positive, got {self.prompt_length}"
            )
        if self.init_method not in INITS:
            raise ValueError(f"PromptTuning.init_method={self.init_method!r}; allowed: {INITS}")

    def wrap(self, model: nn.Module) -> nn.Module:
        # after_restore gets no config; it re-samples in the space of the model wrapped last
        # (the trainer wraps the run's one model). Not a field: it is not a setting.
        object.__setattr__(self, "_embedding_multiplier", _multiplier_of(model))
        return PromptWrapper(
            model,
            self.prompt_length,
            self.init_method,
            self.uniform_scale,
            self.vocab_sample_range,
        )

    def is_trainable(self, path: base.Path) -> bool:
        return self.is_method_param(path)

    def is_method_param(self, path: base.Path) -> bool:
        return path == (PROMPT_PARAM,)

    def validate(self, config, feature_lengths: Mapping[str, int], packed: bool) -> None:
        if packed:
            raise ValueError(
                "prompt tuning needs unpacked examples: the soft prompt is one prefix per row, "
                "so a packed row's later examples would not see it; set packing off"
            )
        sequence_length = sum(feature_lengths.values())
        if self.prompt_length >= sequence_length and not self.allow_longer_than_sequence:
            raise ValueError(
                f"PromptTuning.prompt_length={self.prompt_length} must be shorter than the "
                f"sequence it is prepended to (feature lengths {dict(feature_lengths)}, total "
                f"{sequence_length}); set PromptTuning.allow_longer_than_sequence = True if "
                "that is intended"
            )

    def after_restore(self, params, rng: jax.Array):
        """Re-samples the 'vocab' init from the restored (pretrained) embedding."""
        if self.init_method != "vocab":
            return params
        prompt = _sample_vocab_embeddings(
            rng,
            params["embedding"],
            self.prompt_length,
            self.vocab_sample_range,
            getattr(self, "_embedding_multiplier", None),
        )
        old = params[PROMPT_PARAM]
        # Keep the fresh prompt's placement: the trainer compiles its steps for these shardings.
        prompt = jax.device_put(prompt.astype(old.dtype), getattr(old, "sharding", None))
        return {**params, PROMPT_PARAM: prompt}
