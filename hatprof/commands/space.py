"""`hatprof space list|sample`: the design spaces and seeded samples from them."""
from __future__ import annotations

import click

from hatprof.options import seed_option, space_option
from profiler.space import DesignSpace, list_spaces


def space_size(space: DesignSpace) -> int:
    """Number of distinct architectures in `space`."""
    enc_layer = len(space.encoder_ffn_embed_dim) * len(space.encoder_self_attention_heads)
    dec_layer = (len(space.decoder_ffn_embed_dim) * len(space.decoder_self_attention_heads)
                 * len(space.decoder_ende_attention_heads) * len(space.decoder_arbitrary_ende_attn))
    encoders = len(space.encoder_embed_dim) * sum(enc_layer ** n for n in space.encoder_layer_num)
    decoders = len(space.decoder_embed_dim) * sum(dec_layer ** n for n in space.decoder_layer_num)
    return encoders * decoders


@click.group()
def space() -> None:
    """Design spaces of SubTransformers."""


@space.command("list")
def list_() -> None:
    """List the built-in design spaces."""
    for s in list_spaces():
        click.echo(f"{s.name:15} vocab {s.src_vocab:>6}/{s.tgt_vocab:<6} "
                   f"{space_size(s):9.2e} archs  {s.description}")


@space.command()
@space_option
@click.option("-n", "--samples", "n", type=click.IntRange(min=1), default=10, show_default=True,
              help="Number of distinct architectures.")
@seed_option
def sample(space: DesignSpace, n: int, seed: int) -> None:
    """Print N seeded, distinct architectures of a space as JSON lines."""
    for arch in space.sample_many(n, seed):
        click.echo(arch.canonical_json())
