"""The sections of perfd.toml, one module per part: each a frozen dataclass of ``schema.option``s.

perfd.config assembles them into ``Config`` and loads the file; import them through perfd.config.
"""

from typing import Final

DAY: Final = 86400.0  # seconds: the unit of the longest bounds
