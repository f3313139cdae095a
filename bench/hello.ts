// The baseline: the smallest program the same runtime can compile.
console.log("hello");
