"""`helix serve` flags map onto EngineConfig with vLLM names; no model is loaded here."""

from __future__ import annotations

import argparse

import pytest

from helix.serve_cli import add_parser, engine_config


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_defaults_come_from_engine_config() -> None:
    from helix.runtime.engine_config import EngineConfig

    args = _parse()
    assert (args.host, args.port, args.api_key, args.model) == ("127.0.0.1", 8000, None, None)
    assert engine_config(args) == EngineConfig()


def test_flags_map_to_engine_config() -> None:
    args = _parse(
        "smollm2-135m", "--port", "0", "--api-key", "k", "--served-model-name", "smol",
        "--max-model-len", "1024", "--block-size", "32", "--max-num-seqs", "8",
        "--max-num-batched-tokens", "512", "--no-enable-prefix-caching",
        "--scheduling-policy", "priority", "--dtype", "bfloat16",
        "--attention-backend", "triton", "--kv-cache-memory-gb", "0.5",
    )  # fmt: skip
    config = engine_config(args)
    assert (args.port, args.api_key, args.served_model_name) == (0, "k", "smol")
    assert config.model == "smollm2-135m" and config.max_model_len == 1024
    assert (config.block_size, config.max_num_seqs, config.max_num_batched_tokens) == (32, 8, 512)
    assert config.enable_prefix_caching is False and config.scheduling_policy == "priority"
    assert (config.dtype, config.attention_backend) == ("bfloat16", "triton")
    assert config.kv_cache_memory_gb == 0.5
    assert engine_config(_parse("--enable-prefix-caching")).enable_prefix_caching is True


def test_cluster_mode_is_the_default_without_a_model() -> None:
    from helix.serve_cli import is_cluster_mode

    assert is_cluster_mode(_parse())  # the bundled local cluster
    assert not is_cluster_mode(_parse("smollm2-135m"))
    assert not is_cluster_mode(_parse("--single-node"))
    assert is_cluster_mode(_parse("smollm2-135m", "--cluster", "c.yaml"))
    with pytest.raises(ValueError, match="--plan: needs --cluster"):
        is_cluster_mode(_parse("m", "--plan", "p.yaml"))


def test_bad_values_are_value_errors() -> None:
    with pytest.raises(ValueError, match="block_size"):
        engine_config(_parse("--block-size", "3"))
    with pytest.raises(SystemExit):
        _parse("--scheduling-policy", "lifo")


def test_cluster_mode_passes_engine_flags_to_the_nodes_and_the_coordinator() -> None:
    from helix.serve_cli import cluster_engine_args, cluster_node_args

    args = _parse(
        "--max-model-len", "1024", "--block-size", "32", "--max-num-seqs", "8",
        "--max-num-batched-tokens", "512", "--scheduling-policy", "priority",
        "--dtype", "bfloat16", "--kv-cache-memory-gb", "0.25",
    )  # fmt: skip
    assert cluster_engine_args(args) == {
        "max_model_len": 1024, "max_batch_tokens": 512, "max_num_seqs": 8,
        "scheduling_policy": "priority",
    }  # fmt: skip
    node_args = cluster_node_args(args)
    assert node_args[:2] == ["--kv-cache-memory-gb", "0.25"]
    assert node_args[2:6] == ["--dtype", "bfloat16", "--block-size", "32"]
    assert cluster_engine_args(_parse("--no-enable-prefix-caching")) == {
        "enable_prefix_caching": False
    }
