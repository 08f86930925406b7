"""`kdepth data check`: reads every sample of a source and reports every problem and some stats.

`check_source` never stops at the first bad file: it collects each problem (file path + reason)
along with per-split statistics, so one run tells the user everything to fix.
"""

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from kdepth.errors import DataError


@dataclass
class SplitStats:
    """Statistics of one split over the samples that loaded."""

    split: str
    listed: int = 0  # samples the source lists (pairs found)
    loaded: int = 0  # samples that loaded without a problem
    resolutions: Counter = field(default_factory=Counter)  # (H, W) -> count
    depth_min: float = float("inf")  # metres, over valid pixels
    depth_max: float = float("-inf")
    valid_fraction_sum: float = 0.0

    @property
    def bad(self):
        """Listed samples that failed to load."""
        return self.listed - self.loaded

    @property
    def valid_fraction(self):
        """Mean over loaded samples of the fraction of valid depth pixels (nan if none loaded)."""
        return self.valid_fraction_sum / self.loaded if self.loaded else float("nan")

    def add(self, rgb, depth):
        """Adds one loaded sample."""
        self.loaded += 1
        self.resolutions[(int(rgb.shape[0]), int(rgb.shape[1]))] += 1
        valid = depth[depth > 0]
        if valid.size:
            self.depth_min = min(self.depth_min, float(valid.min()))
            self.depth_max = max(self.depth_max, float(valid.max()))
        self.valid_fraction_sum += valid.size / depth.size


@dataclass
class Problem:
    """One problem: the split it was found in and the `DataError` (path + reason)."""

    split: str
    error: DataError

    @property
    def path(self):
        return self.error.path

    @property
    def reason(self):
        return self.error.reason


@dataclass
class CheckReport:
    """What `check_source` found: problems and per-split statistics."""

    source_name: str
    problems: list = field(default_factory=list)  # [Problem]
    stats: dict = field(default_factory=dict)  # split -> SplitStats
    warnings: list = field(default_factory=list)  # [(split, path, message)]: readable, but worth a look

    @property
    def ok(self):
        """True when no problem was found and at least one sample loaded."""
        return not self.problems and any(s.loaded for s in self.stats.values())

    def format(self):
        """Human-readable report: problems with file paths and reasons, then a stats table."""
        lines = [f"kdepth data check: {self.source_name}"]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            for p in self.problems:
                lines.append(f"  [{p.split}] {p.path}: {p.reason}")
        else:
            lines.append("no problems found.")
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s):")
            lines.extend(f"  [{split}] {path}: {message}" for split, path, message in self.warnings)
        if self.stats:
            header = ("split", "samples", "ok", "bad", "resolution HxW (most common)", "min HxW", "max HxW", "depth m (min..max)", "valid px")
            rows = [header]
            for s in self.stats.values():
                if s.resolutions:
                    (common, count) = s.resolutions.most_common(1)[0]
                    by_area = sorted(s.resolutions, key=lambda hw: (hw[0] * hw[1], hw))
                    res = f"{_hw(common)} ({count}/{s.loaded})"
                    lo, hi = _hw(by_area[0]), _hw(by_area[-1])
                else:
                    res = lo = hi = "-"
                depth = f"{s.depth_min:.3f}..{s.depth_max:.3f}" if s.depth_max >= s.depth_min else "-"
                valid = f"{100 * s.valid_fraction:.1f}%" if s.loaded else "-"
                rows.append((s.split, str(s.listed), str(s.loaded), str(s.bad), res, lo, hi, depth, valid))
            widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
            lines.append("")
            for r in rows:
                lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        lines.append("")
        if self.ok:
            lines.append("OK")
        elif self.problems:
            lines.append(f"NOT OK: {len(self.problems)} problem(s); fix or remove the files above (or train with data.skip_bad_files = true).")
        else:
            lines.append("NOT OK: no sample could be read.")
        return "\n".join(lines)


def _hw(hw):
    return f"{hw[0]}x{hw[1]}"


ORIENTATION_WARNING = (
    "RGB file has EXIF orientation {o} (viewers show it flipped or rotated); its depth map carries none. kdepth "
    "applies the orientation to both (the depth map is taken to share the RGB file's stored pixel grid); if the depth "
    "map was saved as the photo is shown instead, re-save the RGB without the tag (e.g. PIL ImageOps.exif_transpose)."
)


def _check_orientation(source, split, index, report):
    """Adds a warning when a pair's RGB file carries a non-trivial EXIF orientation."""
    from kdepth.data.sources import file_orientation

    pair_paths = getattr(source, "pair_paths", None)
    if pair_paths is None:
        return
    rgb_path = pair_paths(split, index)[0]
    orientation = file_orientation(rgb_path)
    if orientation != 1:
        report.warnings.append((split, str(rgb_path), ORIENTATION_WARNING.format(o=orientation)))


def check_source(source, splits=None, progress=None):
    """Reads every sample of each split of `source` and returns a `CheckReport`.

    Args:
        source: a `kdepth.data.sources.Source`.
        splits: split names to check; None = every split the source has. An unknown or empty
            split is a problem.
        progress: optional callable progress(split, i, n) called after each sample.
    """
    report = CheckReport(source_name=source.name)
    if splits is None:
        splits = source.splits()
        if not splits:
            report.problems.append(Problem("-", DataError(source.name, "has no splits.")))
            return report
    for split in dict.fromkeys(splits):  # unique, in order
        stats = SplitStats(split)
        try:
            n = source.num_samples(split)
        except DataError as e:
            report.problems.extend(Problem(split, p) for p in source.listing_problems(split))
            report.problems.append(Problem(split, e))
            report.stats[split] = stats
            continue
        report.problems.extend(Problem(split, p) for p in source.listing_problems(split))
        names = source.sample_names(split)
        stats.listed = n
        for i in range(n):
            try:
                rgb, depth = source.load(split, i)
            except DataError as e:
                report.problems.append(Problem(split, e))
            except Exception as e:  # a reader bug must not hide the rest of the report
                report.problems.append(Problem(split, DataError(names[i], f"unexpected {type(e).__name__}: {e}")))
            else:
                stats.add(np.asarray(rgb), np.asarray(depth))
                _check_orientation(source, split, i, report)
            if progress:
                progress(split, i, n)
        report.stats[split] = stats
    return report
