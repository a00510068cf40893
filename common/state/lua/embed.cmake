# embed.cmake - turns each common/state/lua/<name>.lua into a C string
# `const char sheaf_lua_<name>[]` in one generated file, so the scripts are
# kept, read and reviewed as Lua while the programs carry them built in.
# A line "--@include NAME" is replaced by the file _NAME.lua (a shared Lua
# function); files whose name starts with "_" are only included.
#   cmake -DOUT=lua_scripts.c -P embed.cmake a.lua b.lua ...
set(body "/* Generated from the .lua files of common/state/lua by common/state/lua/embed.cmake: do not edit. */\n")
math(EXPR last "${CMAKE_ARGC} - 1")
foreach(i RANGE 4 ${last})
  set(f "${CMAKE_ARGV${i}}")
  get_filename_component(name "${f}" NAME_WE)
  if(NOT f MATCHES "\\.lua$" OR name MATCHES "^_")
    continue()
  endif()
  get_filename_component(dir "${f}" DIRECTORY)
  file(READ "${f}" lua)
  string(REGEX MATCHALL "--@include [A-Za-z0-9_]+" includes "${lua}")
  foreach(inc IN LISTS includes)
    string(REPLACE "--@include " "" incname "${inc}")
    file(READ "${dir}/_${incname}.lua" inctext)
    string(REPLACE "${inc}\n" "${inctext}" lua "${lua}")
  endforeach()
  string(REPLACE "\\" "\\\\" lua "${lua}")
  string(REPLACE "\"" "\\\"" lua "${lua}")
  string(REPLACE "\n" "\\n\"\n    \"" lua "${lua}")
  string(APPEND body "const char sheaf_lua_${name}[] =\n    \"${lua}\";\n")
endforeach()
file(WRITE "${OUT}.tmp" "${body}")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
