// Included by ProcessGroupGloo.hpp; nothing from it is used there. See README.md.
#pragma once
