// See ../README.md: nothing of gloo/algorithm.h is needed to parse ProcessGroupGloo.hpp.
#pragma once
