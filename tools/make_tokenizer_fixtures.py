"""Fixtures for the CLIP tokenizer test (crates/difforge-nn/tests/it/sd_tokenizer.rs).

Builds the tokenizer folder Stable Diffusion checkpoints ship (`tokenizer/`: vocab.json, merges.txt,
special_tokens_map.json, tokenizer_config.json, as SD 1.5 has them) from the public CLIP BPE
vocabulary that open-clip-torch ships (`open_clip/bpe_simple_vocab_16e6.txt.gz`, the file OpenAI's
CLIP reads), exactly as CLIP's SimpleTokenizer and transformers' CLIPTokenizer derive it:
  merges = lines 1 .. 49152-256-2 of the file (line 0 is a version header);
  vocab  = the 256 byte-unicode characters, the same with `</w>`, every merge joined, then
           `<|startoftext|>` and `<|endoftext|>`: 49408 entries.
Then it checks that transformers' slow CLIPTokenizer and CLIPTokenizerFast loaded from that folder
give the same ids, and writes `expected_ids.json` with transformers' ids (padding="max_length",
max_length=77, truncation=True) for deterministically generated strings: with the SD 1.x pad token
(`<|endoftext|>`) for all of them, and for a subset with the SD 2.x / SDXL-second-encoder pad token
`!` (id 0). The same tokenizer is saved once more as a single `tokenizer.json`
(CLIPTokenizerFast.save_pretrained, the other files dropped) so that both forms are tested.

The slow tokenizer runs `ftfy.fix_text` first when ftfy is installed (it is, in sd-tools): it
straightens curly quotes, folds full-width forms and ligatures, drops control characters. The fast
tokenizer (and difforge) do not. Strings where the two differ are kept apart, in `slow_differs`, with
both id lists: the test holds difforge to the fast pipeline's ids there, and the list documents where
diffusers (whose SD pipelines load the slow CLIPTokenizer) would tokenise differently.

Needs (fixture generation only): transformers 4.57.1, tokenizers 0.22.1, open-clip-torch 3.2.0, ftfy;
`tools/setup_sd_tools.sh` installs them.
Run: PYTHONPATH=~/.cache/difforge/sd-tools ~/.cache/difforge/torch-2.11.0/bin/python tools/make_tokenizer_fixtures.py
"""
import gzip
import importlib.util
import json
import random
import shutil
import tempfile
import unicodedata
from pathlib import Path

from tokenizers import Tokenizer
from transformers import CLIPTokenizer, CLIPTokenizerFast
from transformers.models.clip.tokenization_clip import bytes_to_unicode

OUT = Path(__file__).resolve().parent.parent / "crates" / "difforge-nn" / "tests" / "fixtures" / "sd"
FOLDER = OUT / "clip-tokenizer"
JSON_FOLDER = OUT / "clip-tokenizer-json"
MAX_LENGTH = 77
N_MERGES = 49152 - 256 - 2
N_BANG = 50

# As SD 1.5's tokenizer/ files have them (runwayml/stable-diffusion-v1-5).
SPECIAL = {"content": None, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def special(content):
    return dict(SPECIAL, content=content)


def bpe_file():
    # Located, not imported: importing open_clip pulls in torchvision, which the tools do not need.
    spec = importlib.util.find_spec("open_clip")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def write_folder(folder, n_merges=N_MERGES, pad="<|endoftext|>"):
    """CLIP's tokenizer folder; with fewer merges, a smaller vocabulary of the same form (the
    tiny Stable Diffusion fixtures use 486 merges for 1000 ids, start and end tokens last)."""
    lines = gzip.open(bpe_file()).read().decode("utf-8").split("\n")
    merges = lines[1 : n_merges + 1]
    assert len(merges) == n_merges and all(len(m.split(" ")) == 2 for m in merges)
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split(" ")) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 512 + n_merges + 2 and len(set(vocab)) == len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    # Compact, non-ASCII kept as is: the same content as SD 1.5's vocab.json, in id order, smaller.
    (folder / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
    )
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {
        "bos_token": special("<|startoftext|>"),
        "eos_token": special("<|endoftext|>"),
        "pad_token": pad,
        "unk_token": special("<|endoftext|>"),
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    config = {
        "add_prefix_space": False,
        "bos_token": dict(special("<|startoftext|>"), __type="AddedToken"),
        "do_lower_case": True,
        "eos_token": dict(special("<|endoftext|>"), __type="AddedToken"),
        "errors": "replace",
        "model_max_length": MAX_LENGTH,
        "name_or_path": "openai/clip-vit-large-patch14",
        "pad_token": pad,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": dict(special("<|endoftext|>"), __type="AddedToken"),
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


SD_PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "(masterpiece:1.2), best quality, ultra-detailed, 1girl, solo, looking at viewer",
    "((best quality)), ((masterpiece)), (detailed:1.4), [blurry], {sharp focus}",
    "portrait of a woman, by Greg Rutkowski and Alphonse Mucha, trending on ArtStation, 8k, octane render",
    "A cinematic shot of a cat wearing a tiny top hat, 35mm, f/1.8, bokeh, golden hour",
    "landscape, mountains, lake, sunrise, highly detailed, digital painting, concept art, sharp focus, illustration",
    "(worst quality, low quality:1.4), lowres, bad anatomy, bad hands, text, error, missing fingers",
    "cyberpunk city at night, neon lights, rain, reflections, blade runner style, <lora:add_detail:0.8>",
    "a watercolor painting of a fox in a snowy forest, soft light, muted colors",
    "Studio Ghibli style, a girl's bicycle leaning on a fence, summer, cumulonimbus clouds",
    "photo of a 1960s diner, kodachrome, film grain, f/2.8, 50mm, ISO 400",
    "an oil painting of a ship in a storm, by J.M.W. Turner",
    "isometric 3D render of a tiny room, blender, unreal engine 5, volumetric lighting",
    "a logo with the text \"HELLO WORLD\" in bold sans-serif font",
    "masterpiece, best quality, (ultra-detailed:1.3), (illustration:1.1), [[[sketch]]], (((colorful)))",
    "RAW photo, a close up portrait photo of 26 y.o woman in wastelander clothes, long haircut, pale skin, slim body",
    "a corgi wearing sunglasses, 4K, HDR, trending on r/aww",
    "A.I. generated art, 2:3 aspect ratio, --ar 16:9 --v 5.2",
    "a dog's toy, the cat's bed, they're here, we've got it, I'm fine, you'll see, she'd go, don't",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "tHe QuIcK bRoWn FoX jUmPs OvEr ThE lAzY dOg",
]

UNICODE = [
    "café au lait, naïve résumé, Ångström, façade, jalapeño, über, crème brûlée",
    "cafe\u0301 au lait, decomposed e\u0301 and o\u0308 (NFC folds them)",
    "東京の夜景、ネオン、雨",
    "一只可爱的猫坐在窗台上，阳光明媚",
    "서울의 밤거리, 네온사인",
    "Москва, Красная площадь, зимой, снег",
    "ПРИВЕТ МИР, Ёлка",
    "مدينة عربية قديمة عند الغروب",
    "שלום עולם",
    "กรุงเทพมหานคร ตอนกลางคืน",
    "नमस्ते दुनिया, ताजमहल",
    "Ελληνικά γράμματα ΑΒΓ αβγ",
    "ǅemal, ǈ, ǋ title-case digraphs, İstanbul, ß, ẞ, ﬁ ligature",
    "Ⅻ roman numeral, ① circled, ½ fraction, ² superscript, ٣ arabic digit, ३ devanagari digit",
    "ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ　１２３",
    "zero\u200bwidth\u200bspace, word\u2060joiner, soft\u00adhyphen, bom\ufeffhere",
    "combining: a\u0300\u0301\u0302\u0303 z\u0336\u0336\u0336",
    "mathematical 𝐛𝐨𝐥𝐝 𝓼𝓬𝓻𝓲𝓹𝓽 letters",
    "Ⓐ Ⓑ Ⓒ, ℃, ℉, №, ™, ©, ®",
]

EMOJI = [
    "a cute dog 🐶 with a ball ⚽",
    "family 👨\u200d👩\u200d👧\u200d👦 at the beach 🏖️",
    "thumbs up 👍🏻👍🏼👍🏽👍🏾👍🏿",
    "woman technologist 👩🏽\u200d💻 and man astronaut 👨🏿\u200d🚀",
    "flags 🇯🇵 🇫🇷 🇺🇸 🏳️\u200d🌈 🏴\u200d☠️",
    "keycaps 1️⃣ 2️⃣ #️⃣, hearts ❤️ 🧡 💛 💚 💙 💜",
    "🔥🔥🔥 fire emoji prompt 🔥🔥🔥",
    "✨sparkles✨ and ⭐stars⭐",
    "🧑\u200d🤝\u200d🧑 holding hands, 🫶 heart hands, 🥹",
]

PUNCT = [
    "Hello, world! How's it going? Fine... thanks; really: yes -- no / maybe \\ perhaps",
    "!!!???...,,,;;;:::",
    "quotes: \"double\" 'single' `back` «guillemets» „low“ ‘curly’ “curly”",
    "it’s the artist’s style, don’t, they’re",
    "brackets (round) [square] {curly} <angle> <<double>>",
    "math: 1+1=2, 3*4=12, 10/2=5, 2^10=1024, x<y>z, a%b, #hashtag, @mention, $100, €50, £20, ¥1000",
    "email someone@example.com, url https://example.com/path?q=1&r=2#frag",
    "numbers 0 1 23 456 7890 3.14159 1,000,000 1e-5 -42 +7 0x1F",
    "dates 2024-01-31, 12:30:45, 31/12/1999",
    "snake_case_words and kebab-case-words and CamelCaseWords and dotted.words.here",
    "html &amp; entities &lt;b&gt; &quot;x&quot; &#39;y&#39;",
    "<|startoftext|> literal specials <|endoftext|> in the prompt",
    "<|ENDOFTEXT|> upper-case special, <|endoftext|><|endoftext|>, <|endof text|>",
    "apostrophes: 's 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D 'x 'abc ''",
    "cat's, dog'S, they'RE, we'Ve, I'M, you'Ll, he'D",
    "tilde~caret^pipe|underscore_",
]

WHITESPACE = [
    "",
    " ",
    "   ",
    "\t\n\r",
    "  leading and trailing spaces  ",
    "tabs\tbetween\t\twords",
    "new\nlines\n\nand\r\nCRLF",
    "many     spaces      between   words",
    "no\u00a0break\u00a0space and ideographic\u3000space and em\u2003space",
    "line\u2028separator and paragraph\u2029separator, next\u0085line, vertical\u000btab, form\u000cfeed",
    "control\u0001chars\u0007here\u001b[0m",
    "mongolian\u180evowel separator, narrow\u202fnbsp",
    "\n\n\ta photo\n\n",
]

WORDS = (
    "a an the of in on with by and portrait photo painting landscape city forest ocean mountain dragon castle knight robot cat "
    "dog girl boy woman man old young beautiful detailed intricate dramatic lighting cinematic volumetric fog rain snow sunset "
    "night neon glowing ethereal surreal fantasy sci-fi steampunk cyberpunk baroque gothic minimalist vibrant pastel monochrome "
    "highly ultra realistic photorealistic hyperrealistic trending artstation unreal engine octane render 8k 4k hdr bokeh depth "
    "field sharp focus soft masterpiece quality best worst lowres blurry jpeg artifacts watermark signature deformed"
).split()

FRAGMENTS = (
    ["café", "東京", "Москва", "مرحبا", "😀", "👩🏽\u200d💻", "🇯🇵", "…", "—", "’s", "'s", "'t", "'re", "n't", "(", ")", "[", "]",
     ":1.2", ":0.8", "!!", "??", "1", "42", "3.5", "2024", "\t", "\n", "  ", "ÀÉÎÕÜ", "ß", "ﬁ", "½", "², ", "<|endoftext|>", "#", "@"]
)


def random_strings(rng, n):
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 18)):
            r = rng.random()
            if r < 0.6:
                w = rng.choice(WORDS)
                c = rng.random()
                w = w.upper() if c < 0.1 else w.capitalize() if c < 0.25 else w
            elif r < 0.75:
                w = f"({rng.choice(WORDS)}:{rng.choice(['0.5', '0.8', '1.1', '1.2', '1.35', '1.5', '2'])})"
            else:
                w = rng.choice(FRAGMENTS)
            parts.append(w)
            parts.append(rng.choice([" ", " ", " ", ", ", ",", "  ", "\t", ". ", ""]))
        out.append("".join(parts).strip(" ") if rng.random() < 0.8 else "".join(parts))
    return out


def random_unicode(rng, n):
    """Strings of random code points from scripts, symbols and emoji blocks: stress for the split pattern."""
    ranges = [(0x20, 0x7E), (0xA0, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F),
              (0xE00, 0xE7F), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x2100, 0x22FF), (0x3000, 0x30FF), (0x4E00, 0x4FFF),
              (0xAC00, 0xAD00), (0xFF00, 0xFFEF), (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF), (0x1D400, 0x1D4FF)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(ranges)
            cp = rng.randint(lo, hi)
            # Unassigned code points, surrogates and private use are not text anyone types.
            if unicodedata.category(chr(cp)) not in ("Cn", "Cs", "Co"):
                chars.append(chr(cp))
            if rng.random() < 0.2:
                chars.append(" ")
        out.append("".join(chars))
    return out


def long_prompts(rng, n):
    out = []
    for i in range(n):
        k = rng.randint(60, 140)
        words = [rng.choice(WORDS) for _ in range(k)]
        out.append((", " if i % 2 else " ").join(words))
    out.append(", ".join(f"word{i}" for i in range(100)))
    out.append("😀" * 100)
    out.append("a " * 80 + "these words are dropped")
    return out


def strings():
    rng = random.Random(20240613)
    fixed = SD_PROMPTS + UNICODE + EMOJI + PUNCT + WHITESPACE
    return fixed + long_prompts(rng, 30) + random_strings(rng, 480) + random_unicode(rng, 140)


def encode(tok, text):
    enc = tok(text, padding="max_length", max_length=MAX_LENGTH, truncation=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    length = sum(mask)
    assert len(ids) == MAX_LENGTH and mask == [1] * length + [0] * (MAX_LENGTH - length), text
    return ids, length


def record(text, ids, length, pad_id):
    # Stored without the padding (verified here to be `pad_id` to the end): the file stays small.
    assert all(i == pad_id for i in ids[length:]), text
    return {"text": text, "len": length, "ids": ids[:length]}


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_folder(tmp / "tok")
        slow = CLIPTokenizer.from_pretrained(tmp / "tok")
        fast = CLIPTokenizerFast.from_pretrained(tmp / "tok")
        slow_bang = CLIPTokenizer.from_pretrained(tmp / "tok", pad_token="!")
        fast_bang = CLIPTokenizerFast.from_pretrained(tmp / "tok", pad_token="!")
        assert slow.pad_token_id == 49407 and fast.pad_token_id == 49407
        assert slow_bang.pad_token_id == 0 and fast_bang.pad_token_id == 0
        # SD 2.x's layout: pad "<|endoftext|>" in tokenizer_config.json, "!" in special_tokens_map.json. transformers
        # reads special_tokens_map.json last and pads with "!", as the Rust test expects of the same layout.
        shutil.copytree(tmp / "tok", tmp / "sd2")
        smap = json.loads((tmp / "sd2" / "special_tokens_map.json").read_text())
        (tmp / "sd2" / "special_tokens_map.json").write_text(json.dumps(dict(smap, pad_token="!")))
        for cls in (CLIPTokenizer, CLIPTokenizerFast):
            sd2 = cls.from_pretrained(tmp / "sd2")
            assert sd2.pad_token == "!" and sd2.pad_token_id == 0, cls
            assert sd2("wow!!!")["input_ids"] == [49406, 2781, 0, 0, 0, 49407]
        # The decoding convention the truncation report follows (CLIPTokenizerFast.decode: `</w>` → space, trimmed).
        long_ids = fast("a " * 80 + "these words are dropped")["input_ids"]
        assert fast.decode(long_ids[76:-1]) == "a a a a a these words are dropped"
        assert fast.decode(fast("(masterpiece:1.2), 🐶")["input_ids"][1:-1]) == "( masterpiece : 1 . 2 ), 🐶"
        fast.save_pretrained(tmp / "saved")
        json_tok = Tokenizer.from_file(str(tmp / "saved" / "tokenizer.json"))

        cases, differs, bang = [], [], []
        texts = strings()
        assert len(set(texts)) == len(texts)
        for text in texts:
            f_ids, f_len = encode(fast, text)
            s_ids, s_len = encode(slow, text)
            # The saved tokenizer.json on its own (no transformers wrapper) gives the same tokens.
            raw = json_tok.encode(text).ids
            n = min(len(raw), MAX_LENGTH) - 1
            assert raw[:n] == f_ids[:n] and len(raw) == f_len or (len(raw) > MAX_LENGTH and f_len == MAX_LENGTH), text
            if f_ids == s_ids:
                cases.append(record(text, f_ids, f_len, 49407))
            else:
                differs.append(dict(record(text, f_ids, f_len, 49407), slow_ids=s_ids[:s_len]))
        # The pad-with-`!` form on every 11th string (long and short ones among them) and on the fixed strings with a
        # "!": with "!" a special token, "!!!" is three tokens, not BPE's one.
        bang_texts = texts[::11][:N_BANG]
        bang_texts += [t for t in SD_PROMPTS + PUNCT + EMOJI if "!" in t and t not in bang_texts]
        for text in bang_texts:
            f_ids, f_len = encode(fast_bang, text)
            s_ids, _ = encode(slow_bang, text)
            if f_ids == s_ids:
                bang.append(record(text, f_ids, f_len, 0))
        assert len(cases) >= 500, len(cases)
        assert len(bang) >= 45, len(bang)
        assert any(c["len"] == MAX_LENGTH for c in cases) and any(c["len"] == MAX_LENGTH for c in bang)

        for folder in (FOLDER, JSON_FOLDER):
            if folder.exists():
                shutil.rmtree(folder)
        shutil.copytree(tmp / "tok", FOLDER)
        JSON_FOLDER.mkdir(parents=True)
        # Re-serialised compactly (same content; save_pretrained pretty-prints, ~3x the bytes).
        saved = json.loads((tmp / "saved" / "tokenizer.json").read_text(encoding="utf-8"))
        (JSON_FOLDER / "tokenizer.json").write_text(
            json.dumps(saved, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
        )

    expected = {
        "about": "transformers 4.57.1 CLIPTokenizer and CLIPTokenizerFast ids, padding=max_length, max_length=77, "
        "truncation=True; ids without their padding (len of them), padded with pad_id to 77. "
        "slow_differs: the fast tokenizer's ids where the slow one (ftfy.fix_text first) differs.",
        "max_length": MAX_LENGTH,
        "pad_end": {"pad_id": 49407, "cases": cases},
        "pad_bang": {"pad_id": 0, "cases": bang},
        "slow_differs": {"pad_id": 49407, "cases": differs},
    }
    # One case a line: reviewable diffs, small file.
    lines = ["{"]
    lines.append(f' "about": {json.dumps(expected["about"])},')
    lines.append(f' "max_length": {MAX_LENGTH},')
    for i, key in enumerate(("pad_end", "pad_bang", "slow_differs")):
        part = expected[key]
        lines.append(f' "{key}": {{"pad_id": {part["pad_id"]}, "cases": [')
        rows = [f"  {json.dumps(c, ensure_ascii=True, separators=(',', ':'))}" for c in part["cases"]]
        lines.append(",\n".join(rows))
        lines.append(" ]}" + ("," if i < 2 else ""))
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)
    (FOLDER / "expected_ids.json").write_text(text)
    print(f"{len(cases)} strings agree (slow == fast), {len(bang)} with pad '!', {len(differs)} where slow (ftfy) differs")
    for c in differs:
        print("  slow differs:", repr(c["text"][:80]))


if __name__ == "__main__":
    main()
