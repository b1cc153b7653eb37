"""BERT sentence-embedding models, from a Hugging Face folder to GGUF, with numpy and the `gguf` package alone.

llama.cpp serves BERT embeddings from a GGUF, and its converter (convert_hf_to_gguf.py, class BertModel) needs
torch and transformers. This writes what that converter writes for a BERT model with a WordPiece tokenizer
(tokenizer.json) and a sentence-transformers pooling config: the same keys in the same order, the same tensor
names, types and bytes, the vocabulary in its "phantom space" form (a word-initial piece gets "▁", a "##" piece
loses its "##"), the special tokens read as its SpecialVocab reads them, and the pooling type from modules.json.
Only general.name and general.organization are the caller's (llama.cpp's converter guesses them from
`_name_or_path`, which names the model this one was fine-tuned from).

The folder is read through a `read(name) -> bytes | None` function, so a zipped folder needs no unpacking.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lf.errors import LfError

OUTTYPES = ("f16", "f32", "q8_0")  # llama.cpp's converter picks f16 for float32 weights ("auto")
ARCHITECTURES = ("BertModel", "BertForMaskedLM")
# gguf.TokenType values (written out: llama.cpp's WordPiece vocabulary uses only these)
NORMAL, UNUSED, CONTROL = 1, 5, 3
PHANTOM_SPACE = "\u2581"
SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")  # as llama.cpp's SpecialVocab orders them

Reader = Callable[[str], "bytes | None"]


class ConversionError(LfError):
    """The folder is not a model this converter writes (or is damaged)."""


@dataclass(frozen=True)
class Converted:
    path: Path
    tensors: int
    parameters: int
    outtype: str
    pooling: str | None  # "mean", "cls", "last"; None when the folder names no pooling


def folder_reader(folder: Path) -> Reader:
    def read(name: str) -> bytes | None:
        path = folder / name
        return path.read_bytes() if path.is_file() else None

    return read


def zip_reader(archive: Path, prefix: str = "") -> Reader:
    """Files of a zipped folder (`prefix`: the folder's path inside the archive, if any)."""
    import zipfile

    def read(name: str) -> bytes | None:
        with zipfile.ZipFile(archive) as zf:
            try:
                return zf.read(prefix + name)
            except KeyError:
                return None

    return read


def _json(read: Reader, name: str, required: bool = True) -> dict:
    data = read(name)
    if data is None:
        if required:
            raise ConversionError(f"the model folder has no {name}")
        return {}
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ConversionError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{name} does not hold a JSON object")
    return value


def safetensors(data: bytes) -> dict:
    """name → float32 or float16 numpy array, in name order (as llama.cpp's converter iterates them)."""
    import numpy as np

    if len(data) < 8:
        raise ConversionError("model.safetensors is truncated")
    (size,) = struct.unpack_from("<Q", data)
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError as exc:
        raise ConversionError(f"model.safetensors has an unreadable header: {exc}") from None
    header.pop("__metadata__", None)
    body = 8 + size
    tensors = {}
    for name in sorted(header):
        info = header[name]
        start, end = info["data_offsets"]
        raw = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=body + start)
        dtype = info["dtype"]
        if dtype == "F32":
            array = raw.view("<f4")
        elif dtype == "F16":
            array = raw.view("<f2")
        elif dtype == "BF16":  # the upper half of a float32
            array = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype in ("I64", "I32"):  # buffers such as position_ids, which nothing loads
            array = raw.view("<i8" if dtype == "I64" else "<i4")
        else:
            raise ConversionError(f"model.safetensors: tensor {name} has type {dtype}, not F32, F16 or BF16")
        tensors[name] = array.reshape(info["shape"])
    return tensors


def _hf_tensor_name(name: str) -> str | None:
    """llama.cpp's BertModel.filter_tensors: the name its tensor map knows, or None for a tensor it drops."""
    name = name.removeprefix("bert.")
    if name.endswith(".gamma"):
        name = name[:-6] + ".weight"
    if name.endswith(".beta"):
        name = name[:-5] + ".bias"
    if name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
        return None
    if name.startswith(("cls.predictions", "cls.seq_relationship")):
        return None
    return name


def vocabulary(tokenizer: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and token types as llama.cpp's converter writes a WordPiece vocabulary."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "WordPiece":
        raise ConversionError(
            f"tokenizer.json holds a {model.get('type') or 'unknown'} tokenizer, not WordPiece",
            hint="only BERT models with a WordPiece tokenizer (tokenizer.json) are converted",
        )
    by_id = {int(i): t for t, i in (model.get("vocab") or {}).items()}
    added = {int(t["id"]): t for t in tokenizer.get("added_tokens") or []}
    by_id.update({i: t["content"] for i, t in added.items()})
    if not by_id or max(by_id) >= vocab_size:
        raise ConversionError(f"tokenizer.json's vocabulary does not fit the model's {vocab_size} tokens")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added and added[i].get("special"):
            tokens.append(by_id[i])
            types.append(CONTROL)
        elif i in added:
            raise ConversionError(f"tokenizer.json adds the non-special token {by_id[i]!r}, which is not supported")
        else:
            token = by_id[i]
            tokens.append(token[2:] if token.startswith("##") else PHANTOM_SPACE + token)
            types.append(NORMAL)
    return tokens, types


def special_tokens(tokenizer: dict, tokenizer_config: dict, config: dict, vocab_size: int):
    """(ids by type, add_* flags, lowercase) as llama.cpp's SpecialVocab reads a BERT tokenizer.json."""
    tc = dict(tokenizer_config)
    if not tc.get("bos_token") and tc.get("cls_token"):
        tc["bos_token"] = tc["cls_token"]
    if not tc.get("eos_token") and tc.get("sep_token"):
        tc["eos_token"] = tc["sep_token"]
    add: dict[str, bool] = {}
    post = tokenizer.get("post_processor") or {}
    for processor in post.get("processors", [post]):
        if processor.get("type") != "TemplateProcessing":
            continue
        single, pair = processor.get("single") or [], processor.get("pair") or []
        first = last = None
        if len(single) > 1:
            first = single[0].get("SpecialToken", {}).get("id")
            last = single[-1].get("SpecialToken", {}).get("id")
            if first:
                add["bos"] = first in (tc.get("bos_token"), tc.get("cls_token"))
            if last:
                add["eos"] = last == tc.get("eos_token")
        inner = pair[1 if first and pair and pair[0].get("SpecialToken", {}).get("id") == first else 0 :]
        if last and inner and inner[-1].get("SpecialToken", {}).get("id") == last:
            inner = inner[:-1]
        if inner and inner[0].get("Sequence", {}).get("id") == "A" and inner[-1].get("Sequence", {}).get("id") == "B":
            middle = inner[1:-1]
            if middle:
                separators = (tc.get("sep_token"), tc.get("eos_token"))
                entry = middle[0].get("SpecialToken", {}).get("id")
                add_sep = bool(entry in separators and not last)
                if len(middle) == 2 and middle[1].get("SpecialToken", {}).get("id") in separators:
                    add_sep = True
                add["sep"] = add_sep
    added = tokenizer.get("added_tokens") or []
    ids: dict[str, int] = {}
    for kind in SPECIAL_TYPES:
        flag = tc.get(f"add_{kind}_token")
        if isinstance(flag, bool) and kind not in add:
            add[kind] = flag
        entry = tc.get(f"{kind}_token")
        content = entry.get("content") if isinstance(entry, dict) else entry
        if isinstance(content, str):
            found = next((t.get("id") for t in added if t.get("content") == content), None)
            if isinstance(found, int) and 0 <= found < vocab_size:
                ids.setdefault(kind, found)
    for kind in SPECIAL_TYPES:
        found = config.get(f"{kind}_token_id")
        if isinstance(found, int) and 0 <= found < vocab_size:
            ids.setdefault(kind, found)
    return ids, add, _lowercase(tokenizer.get("normalizer") or {})


def _lowercase(normalizer: dict) -> bool | None:
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return normalizer.get("lowercase")
    if kind == "Sequence":
        found = [_lowercase(n) for n in normalizer.get("normalizers") or []]
        return next((f for f in reversed(found) if f is not None), None)
    return None


def pooling_type(read: Reader) -> str | None:
    """The sentence-transformers Pooling module's mode (modules.json → its config.json)."""
    modules = read("modules.json")
    if modules is None:
        return None
    try:
        path = next((m["path"] for m in json.loads(modules) if str(m.get("type", "")).endswith("Pooling")), None)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConversionError(f"modules.json cannot be read: {exc}") from None
    if path is None:
        return None
    pooling = _json(read, f"{path}/config.json")
    if pooling.get("pooling_mode_mean_tokens"):
        return "mean"
    if pooling.get("pooling_mode_cls_token"):
        return "cls"
    if pooling.get("pooling_mode_lasttoken"):
        return "last"
    mode = pooling.get("pooling_mode")
    if mode in ("mean", "cls", "lasttoken"):
        return "last" if mode == "lasttoken" else mode
    raise ConversionError(f"{path}/config.json: only mean, CLS and last-token pooling are supported")


def convert(
    read: Reader,
    out: Path,
    *,
    name: str,
    organization: str | None = None,
    outtype: str = "f16",
    tokenizer_pre: str = "default",
) -> Converted:
    """Write the BERT model of the folder `read` reads as the GGUF file `out` (atomically: a file beside it,
    renamed into place once complete). `tokenizer_pre`: llama.cpp's converter names the pre-tokenizer after a
    hash of a test string's tokens, which needs the model's own tokenizer code; llama.cpp reads nothing from it
    for a WordPiece vocabulary, so it is only what that converter would have written."""
    import gguf
    import numpy as np

    if outtype not in OUTTYPES:
        raise ConversionError(f"outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    config = _json(read, "config.json")
    if config.get("model_type") != "bert" or not set(config.get("architectures") or ()) & set(ARCHITECTURES):
        described = ", ".join(config.get("architectures") or ["?"])
        raise ConversionError(
            f"config.json describes a {config.get('model_type')!r} model ({described})",
            hint=f"only BERT models ({', '.join(ARCHITECTURES)}) are converted",
        )
    tokenizer = _json(read, "tokenizer.json")
    blocks = int(config["num_hidden_layers"])
    vocab_size = int(config.get("vocab_size") or len((tokenizer.get("model") or {}).get("vocab") or {}))
    tokens, token_types = vocabulary(tokenizer, vocab_size)
    ids, add, lowercase = special_tokens(tokenizer, _json(read, "tokenizer_config.json", False), config, vocab_size)
    pooling = pooling_type(read)
    weights = read("model.safetensors")
    if weights is None:
        raise ConversionError("the model folder has no model.safetensors")

    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]
    qtype = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[outtype]
    always_f32 = {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD], gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_TYPES]}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, blocks)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    try:
        parameters = count = 0
        for hf_name, array in safetensors(weights).items():
            mapped = _hf_tensor_name(hf_name)
            if mapped is None:
                continue
            gguf_name = names.get_name(mapped, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ConversionError(f"model.safetensors: no GGUF name for the tensor {hf_name}")
            data = array.astype(np.float32) if array.dtype not in (np.float16, np.float32) else array
            kind = qtype
            # llama.cpp keeps norms, biases, 1-D tensors, position and token-type embeddings in F32
            if (
                data.ndim <= 1
                or gguf_name.endswith("_norm.weight")
                or not gguf_name.endswith(".weight")
                or gguf_name.removesuffix(".weight") in always_f32
            ):
                kind = gguf.GGMLQuantizationType.F32
            try:
                packed = gguf.quants.quantize(data, kind)
            except gguf.QuantError:  # a row length Q8_0 cannot take: F16, as llama.cpp's converter falls back
                kind = gguf.GGMLQuantizationType.F16
                packed = gguf.quants.quantize(data, kind)
            writer.add_tensor(gguf_name, packed, raw_dtype=kind)
            parameters += int(data.size)
            count += 1

        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        if organization:
            writer.add_organization(organization)
        writer.add_size_label(gguf.size_label(parameters, 0, 0, 0))
        writer.add_block_count(blocks)
        writer.add_context_length(int(config["max_position_embeddings"]))
        writer.add_embedding_length(int(config["hidden_size"]))
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_head_count(int(config["num_attention_heads"]))
        writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-12)))
        writer.add_file_type(ftype)
        writer.add_causal_attention(False)
        if pooling is not None:
            writer.add_pooling_type(
                {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "last": gguf.PoolingType.LAST}[pooling]
            )
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_token_type_count(int(config.get("type_vocab_size", 1)))
        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre(tokenizer_pre)
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
        keys = gguf.Keys.Tokenizer
        id_keys = {"bos": keys.BOS_ID, "eos": keys.EOS_ID, "unk": keys.UNK_ID, "sep": keys.SEP_ID, "pad": keys.PAD_ID}
        id_keys["mask"] = keys.MASK_ID  # llama.cpp has no key for the CLS token: it is the BOS token
        for kind_name, token_id in ids.items():
            if kind_name in id_keys:
                writer.add_uint32(id_keys[kind_name], token_id)
        flag_keys = {"bos": keys.ADD_BOS, "eos": keys.ADD_EOS, "sep": keys.ADD_SEP}
        for kind_name, value in add.items():
            if kind_name in flag_keys:
                writer.add_bool(flag_keys[kind_name], value)
        if lowercase is not None:
            writer.add_bool("tokenizer.ggml.normalizer.lowercase", lowercase)

        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return Converted(out, count, parameters, outtype, pooling)
