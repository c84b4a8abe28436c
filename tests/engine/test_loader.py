"""The SmolLM2 conversion's parse-once context (workers/engine/loader.py)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from workers.engine.loader import _gguf_parsed_once


def _write_gguf(path: Path) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_file_is_parsed_once_inside_and_afresh_after(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    _write_gguf(path)
    make_reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with _gguf_parsed_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first
        assert first.tensors[0].name == "token_embd.weight"
        llama = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(llama, 2) is gguf.get_tensor_name_map(llama, 2)
        assert gguf.get_tensor_name_map(llama, 2).get_name("model.embed_tokens") == "token_embd"
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (make_reader, name_map)
    assert gguf.GGUFReader(path) is not first
