"""Physical removal of channels: `shrink`, `mask_channels`, `zeroed_channels`.

`tfprune.shrink` is the function `shrink`; `tfprune.shrink.mask_channels` and
`tfprune.shrink.zeroed_channels` are reachable through it as well as by import
(`from tfprune.shrink import zeroed_channels`).
"""

from tfprune.shrink.masking import mask_channels
from tfprune.shrink.physical import shrink
from tfprune.shrink.zeroed import zeroed_channels

# `import tfprune` binds `tfprune.shrink` to the function above (the package's entry point);
# these attributes keep the package's other functions reachable as `tfprune.shrink.<name>`.
shrink.shrink = shrink
shrink.mask_channels = mask_channels
shrink.zeroed_channels = zeroed_channels
