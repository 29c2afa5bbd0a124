// Simulation-only stream sink of the training harness (sim/train_system.py): every word taken
// (`en`) is written to FILE as one hex line, so millions of words never pass through cocotb.
// `flush` (held after the run) flushes the file.
module cnnforge_sink #(
    parameter integer WIDTH = 32,
    parameter FILE = ""
) (
    input  wire             clk,
    input  wire             en,
    input  wire             flush,
    input  wire [WIDTH-1:0] data
);
    integer fd;
    initial fd = $fopen(FILE, "w");
    always @(posedge clk) begin
        if (en) $fwrite(fd, "%h\n", data);
        if (flush) $fflush(fd);
    end
endmodule
