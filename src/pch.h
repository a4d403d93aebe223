// Precompiled header: the heavy, stable includes every translation unit uses.
#pragma once
#include <torch/torch.h>
#include <fmt/format.h>
#include <yaml-cpp/yaml.h>
#include <cstdint>
#include <map>
#include <string>
#include <vector>
