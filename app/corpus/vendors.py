"""Series names that Siemens, GE and Philips scanners write, in the hospitals' languages.

Each vendor has its own sequence words (Siemens ``t1_se_tra``, GE ``Ax T1 SE``, Philips ``T1W_SE``);
the technologists add pre/post-contrast words in the local language. ``protocol`` builds the four
series of a standard tumour protocol (plus optional distractors) named the way one vendor and one
language name them.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.synthetic_study import GE, PHILIPS, SIEMENS, SeriesSpec, Vendor

LANGUAGES = ("en", "de", "fr", "es", "it", "nl")


@dataclass(frozen=True)
class ContrastWords:
    """How one language says before / after contrast (as written in series descriptions)."""

    pre: str
    post: str


CONTRAST_WORDS: dict[str, ContrastWords] = {
    "en": ContrastWords("pre", "post Gd"),
    "de": ContrastWords("nativ", "nach KM"),
    "fr": ContrastWords("sans injection", "avec injection"),
    "es": ContrastWords("sin contraste", "con contraste"),
    "it": ContrastWords("pre mdc", "post mdc"),
    "nl": ContrastWords("zonder contrast", "na contrast"),
}

# Alternative local words, used by the cases that test more than one phrasing.
ALTERNATIVE_WORDS: dict[str, ContrastWords] = {
    "de": ContrastWords("vor KM", "mit KM"),
    "fr": ContrastWords("sans gado", "apres gado"),
    "es": ContrastWords("sin gadolinio", "post gadolinio"),
    "it": ContrastWords("senza mdc", "dopo mdc"),
    "nl": ContrastWords("voor contrast", "met contrast"),
    "en": ContrastWords("without contrast", "with contrast"),
}

# The axial plane in each language (descriptions often carry it).
AXIAL: dict[str, str] = {"en": "ax", "de": "tra", "fr": "ax", "es": "ax", "it": "ax", "nl": "tra"}


@dataclass(frozen=True)
class VendorNames:
    """A vendor's sequence words for the four contrasts and how it joins words."""

    vendor: Vendor
    t1: str
    t2: str
    flair: str
    separator: str

    def name(self, *words: str) -> str:
        """Words joined the vendor's way (Siemens: lower case with underscores)."""
        parts = [w for w in words if w]
        if self.separator == "_":
            return "_".join(p.replace(" ", "_") for p in parts)
        return " ".join(parts)


VENDOR_NAMES: dict[str, VendorNames] = {
    "siemens": VendorNames(SIEMENS, "t1_se_{plane}", "t2_tse_{plane}", "t2_tirm_{plane}_dark-fluid", "_"),
    "ge": VendorNames(GE, "{Plane} T1 SE", "{Plane} T2 FSE", "{Plane} T2 FLAIR", " "),
    "philips": VendorNames(PHILIPS, "T1W_SE {plane}", "T2W_TSE {plane}", "T2W_FLAIR {plane}", " "),
}


def descriptions(vendor: str, language: str, words: ContrastWords | None = None) -> dict[str, str]:
    """Role -> SeriesDescription of the standard protocol for one vendor and language."""
    names = VENDOR_NAMES[vendor]
    words = words or CONTRAST_WORDS[language]
    plane = AXIAL[language]
    fill = {"plane": plane, "Plane": plane.capitalize()}
    t1 = names.t1.format(**fill)
    return {
        "t1n": names.name(t1, words.pre),
        "t1c": names.name(t1, words.post),
        "t2w": names.t2.format(**fill),
        "t2f": names.flair.format(**fill),
    }


SMALL = dict(rows=48, columns=48, slices=24, pixel_spacing=(4.0, 4.0), slice_thickness=6.0)


def protocol(vendor: str, language: str, words: ContrastWords | None = None, **grid: object) -> list[SeriesSpec]:
    """T1 pre, T1 post, T2, FLAIR (axial 2D, small matrices) named by one vendor in one language.

    Only the post-contrast T1 carries contrast-bolus attributes; names carry the words.
    """
    shape = {**SMALL, **grid}
    names = descriptions(vendor, language, words)
    equipment = VENDOR_NAMES[vendor].vendor
    return [
        SeriesSpec("t1n", names["t1n"], "axial", vendor=equipment, acquisition="t1_2d", **shape),  # type: ignore[arg-type]
        SeriesSpec("t1c", names["t1c"], "axial", vendor=equipment, **shape),  # type: ignore[arg-type]
        SeriesSpec("t2w", names["t2w"], "axial", vendor=equipment, **shape),  # type: ignore[arg-type]
        SeriesSpec("t2f", names["t2f"], "axial", vendor=equipment, **shape),  # type: ignore[arg-type]
    ]
