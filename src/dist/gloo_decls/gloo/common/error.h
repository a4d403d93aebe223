// See ../../README.md: nothing of gloo/common/error.h is needed to parse ProcessGroupGloo.hpp.
#pragma once
