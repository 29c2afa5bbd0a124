// Test-vector ROM of the stream harness (sim/harness.py): contents from a $readmemh file, so
// neither Amaranth nor the simulator's compiler ever sees the (possibly millions of) words, and
// one simulator build serves any contents of the same size.
module cnnforge_rom #(
    parameter integer WIDTH = 8,
    parameter integer DEPTH = 1,
    parameter FILE = ""
) (
    input  wire [31:0]      addr,
    output wire [WIDTH-1:0] data
);
    reg [WIDTH-1:0] mem [0:DEPTH-1];
    initial $readmemh(FILE, mem);
    assign data = addr < DEPTH ? mem[addr] : {WIDTH{1'b0}};
endmodule
