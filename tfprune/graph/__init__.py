"""Channel-dependency graph: which channels of which layers must be removed together."""

from tfprune.graph.group import ChannelGroup, Member, ParamSlice, PRODUCER, CONSUMER, PASSTHROUGH
from tfprune.graph.paths import find_layer, find_variable, iter_layers
from tfprune.graph.channel_graph import ChannelGraph, channel_groups
