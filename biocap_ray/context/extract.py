"""Visual-trait excerpts: the sentences of an article that describe how an organism looks.

The caption prompt uses the excerpt to standardise terms for traits the image shows, so
sentences about range, diet, behaviour or naming are left out unless they also describe
appearance. Citations, pronunciations and unit conversions are removed before sentences are
weighed; the kept sentences stay in article order within a character budget.
"""

from __future__ import annotations

import re
import unicodedata

_COLOURS = (
    "black white grey gray brown red orange yellow green blue purple violet pink cream buff tan rufous "
    "chestnut olive golden gold silver silvery bronze copper maroon scarlet crimson ochre ivory beige "
    "colour color colours colors coloured colored colouration coloration pigment pale dark darker light "
    "bright dull iridescent metallic glossy translucent transparent hue tint tinge tinged blackish whitish "
    "greyish grayish brownish reddish yellowish greenish bluish pinkish purplish dusky sooty"
)
_PATTERN = (
    "spot spots spotted striped stripe stripes stripy banded band bands barred bar bars mottled speckled "
    "speckles streaked streaks streak patch patches patterned pattern markings marked marking blotch "
    "blotches blotched dotted ringed rings stippled variegated flecked flecks mask eyespot eyespots"
)
_SIZE = (
    "metre metres meter meters centimetres length long short tall height wingspan span large small tiny "
    "huge size sized diameter width wide broad narrow slender stout thick thin massive minute medium-sized "
    "large-sized small-sized"
)
_SHAPE = (
    "round rounded oval ovate elongate elongated conical cylindrical flattened flat pointed tapering "
    "tapered curved hooked forked lobed globular spherical triangular heart-shaped shaped shape "
    "compact robust stocky plump streamlined spiral coiled serrated toothed compressed depressed"
)
_TEXTURE = (
    "smooth rough hairy hairless furry woolly wooly velvety scaly spiny spiky shiny waxy warty bristly "
    "feathery leathery downy fluffy shaggy coarse fine soft sticky slimy ridged wrinkled granular fleshy"
)
_STRUCTURES = (
    "plumage feather feathers fur coat pelage mane hair hairs skin scales scale shell carapace plastron "
    "exoskeleton wing wings forewing forewings hindwing hindwings tail tails bill beak crest crown "
    "nape throat breast chest belly flank flanks back rump mantle underparts upperparts underside "
    "upperside head face cheek cheeks eye eyes eyering ear ears snout muzzle horn horns antler antlers "
    "tusk tusks leg legs feet foot claw claws hoof hooves fin fins dorsal ventral pectoral caudal gill "
    "gills antenna antennae thorax abdomen body bodies neck limb limbs toe toes web webbed wattle comb "
    "petal petals sepal sepals flower flowers bloom blossom inflorescence leaf leaves leaflet leaflets "
    "stem stems stalk bark trunk branch branches cap gills stipe ring frond fronds cone cones catkin "
    "catkins spine spines thorn thorns tentacle tentacles arm arms shell whorl tubercle tubercles "
    "hump humps humped mouth mouths lure esca barbel barbels "
    "thallus lobe lobes mandible mandibles proboscis elytra tarsi tarsus iris pupil plume plumes "
    "whiskers stripes sexes male males female females juvenile juveniles adult adults dimorphic "
    "dimorphism breeding"
)
VISUAL_WORDS = frozenset(" ".join((_COLOURS, _PATTERN, _SIZE, _SHAPE, _TEXTURE, _STRUCTURES)).split())
# Words whose sentences are about something other than looks (habitat, diet, naming, status).
OTHER_WORDS = frozenset(
    (
        "found native distributed distribution range habitat habitats inhabits inhabit feeds feed feeding diet "
        "eats eat prey preys hunts hunting migrates migration migratory population populations conservation "
        "iucn endangered threatened extinct named name etymology word derived genus family described "
        "discovered species subspecies related relative relatives phylogenetic clade classified taxonomy "
        "breeds nests nesting lays eggs sold cultivated cultivation introduced invasive economic latin greek "
        "term authors"
    ).split()
)
_WEAK = frozenset({"long", "short", "large", "small", "body", "back", "light", "dark", "ring",
                   "breeding", "male", "males", "female", "females", "adult", "adults", "juvenile", "juveniles",
                   "arm", "arms", "bar", "bars", "band", "bands", "name", "head", "medium-sized", "size"})

_ABBREVIATIONS = frozenset(
    "c ca approx e.g i.e etc sp spp subsp ssp var vs cf al fig st mt no nos jr sr dr prof mr mrs".split()
)
_CITATION = re.compile(r"\[(?:\d+|[a-z]|note \d+|citation needed|clarification needed|when\?|who\?|"
                       r"according to whom\?|dubious[^\]]*|verification needed|page needed|[a-z ]+ needed)\]",
                       re.I)
_IPA_CHARS = set("ˈˌːəɪʊɛɔæʃʒθðŋɑɒʌɜɐɡʔɹɾ")
_PRONUNCIATION = re.compile(r"\b(?:pronounced|pronunciation|listen|IPA|lit\.|Latin for|Greek for)\b", re.I)
_CONVERSION = re.compile(
    r"\(\s*(?:about |approx\.? |c\. )?[\d.,\s–\-−/]+(?:to|and|or|[\d.,\s–\-−/])*\s*"
    r"(?:in|ft|lb|oz|mi|yd|sq in|cu in|°F|mph|inches|feet|pounds|ounces)\b[^()]*\)"
)


def _strip_parentheticals(text: str) -> str:
    """Drop parentheses that hold pronunciations, IPA, or only an imperial unit conversion."""
    text = _CONVERSION.sub("", text)
    out: list[str] = []
    stack: list[int] = []
    for ch in text:
        if ch == "(":
            stack.append(len(out))
            out.append(ch)
        elif ch == ")" and stack:
            start = stack.pop()
            inner = "".join(out[start + 1 :])
            if (
                _PRONUNCIATION.search(inner)
                or any(c in _IPA_CHARS for c in inner)
                or re.search(r"/[^/\s][^/]*/", inner)
                or not inner.strip(" ;,:")
            ):
                del out[start:]
            else:
                out.append(ch)
        else:
            out.append(ch)
    return "".join(out)


def clean_text(text: str | None) -> str:
    """Plain prose: citations, pronunciations, conversions and stray markup removed, spaces collapsed."""
    if not text:
        return ""
    text = unicodedata.normalize("NFC", text).replace("\ufffd", "").replace("\xa0", " ")
    text = _CITATION.sub("", text)
    text = re.sub(r"\[\s*\]", "", text)
    text = re.sub(r"<[^>]{1,200}>", " ", text)  # stray HTML tags
    text = re.sub(r"'{2,}|={2,}", "", text)  # wiki emphasis, heading marks
    text = _strip_parentheticals(text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", " ".join(text.split()))
    text = re.sub(r"\(\s*[,;:]\s*", "(", text)
    return text.strip()


def split_sentences(text: str) -> list[str]:
    """Sentences of plain prose, not split after abbreviations (``c.``, ``e.g.``) or initials (``A.``)."""
    pieces = re.split(r"(?<=[.!?…])[\"”’)]?\s+(?=[\"“(\[]?[A-Z0-9])", text)
    sentences: list[str] = []
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        if sentences:
            last_word = sentences[-1].rsplit(None, 1)[-1].rstrip(".").lower()
            if last_word in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last_word):
                sentences[-1] = f"{sentences[-1]} {piece}"
                continue
        sentences.append(piece)
    return sentences


def _words(sentence: str) -> set[str]:
    """Lower-case words; hyphenated compounds also count by their parts (``black-headed``)."""
    found = re.findall(r"[a-z]+(?:-[a-z]+)*", sentence.lower())
    return set(found) | {part for word in found if "-" in word for part in word.split("-")}


def visual_score(sentence: str) -> float:
    """Distinct appearance words (weak ones count half), less one per kind of non-visual topic."""
    words = _words(sentence)
    if re.search(r"\d\s*(?:cm|mm|m|in|ft)\b", sentence):
        words.add("metre")
    visual = words & VISUAL_WORDS
    score = sum(0.5 if w in _WEAK else 1.0 for w in visual)
    return score - 0.75 * len(words & OTHER_WORDS)


def _truncated(sentence: str) -> bool:
    return sentence.endswith(("...", "…")) or not sentence.endswith((".", "!", "?", ".\"", ".”", ".)"))


def visual_sentences(text: str | None, max_chars: int = 600, min_score: float = 1.0) -> str:
    """The appearance sentences of ``text``, in order, joined, at most ``max_chars`` characters.

    A source cut off with ``...`` keeps its last fragment, ending in an ellipsis. A single
    sentence longer than the budget is cut at a word boundary and ends with an ellipsis too.
    """
    sentences = split_sentences(clean_text(text))
    if sentences and _truncated(sentences[-1]):  # a source cut off mid-sentence: mark it as cut
        sentences[-1] = sentences[-1].rstrip(" .…,;:") + "…"
    kept: list[str] = []
    used = 0
    for sentence in sentences:
        if visual_score(sentence) < min_score:
            continue
        extra = len(sentence) + (1 if kept else 0)
        if used + extra <= max_chars:
            kept.append(sentence)
            used += extra
        elif not kept:
            cut = sentence[: max_chars - 1].rsplit(" ", 1)[0].rstrip(",;:")
            kept.append(cut + "…")
            break
    return " ".join(kept)
