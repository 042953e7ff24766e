set terminal pngcairo size 1800,1000 font "DejaVu Sans,11" noenhanced
set output "/work/main/bench/results/20261207-w3-repeat6-37/chart.png"
set multiplot layout 2,4 title "Postfix 3.12-20260821 stock and patched: ratio to stock with smtp_tls_connection_reuse = no (log scale; 1 = same)" font ",15"
set logscale y 10
set grid ytics lc rgb '#dddddd'
set xrange [-0.6:0.6]
set style fill solid 0.85 border -1
set bmargin 4
unset key
set title "TLS handshakes per message" font ",12"
set yrange [0.0375:2]
set ytics ('0.05' 0.05, '0.1' 0.1, '0.2' 0.2, '0.5' 0.5, '1' 1, '2' 2)
set xtics ("W3\n1000/1000" 0) font ',10'
set label 10 '0' at 0.3,0.046875 center font ',8'
plot 1 with lines lc rgb 'black' lw 2 notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 0 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#d95f02' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 0 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 1 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#7570b3' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 1 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 2 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#1b9e77' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 2 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 3 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#999999' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 3 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle
unset label
set title "TCP connections per message" font ",12"
set yrange [0.0375:2]
set ytics ('0.05' 0.05, '0.1' 0.1, '0.2' 0.2, '0.5' 0.5, '1' 1, '2' 2)
set xtics ("W3\n1000/1000" 0) font ',10'
plot 1 with lines lc rgb 'black' lw 2 notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 4 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#d95f02' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 4 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 5 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#7570b3' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 5 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 6 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#1b9e77' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 6 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 7 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#999999' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 7 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle
unset label
set title "messages per second" font ",12"
set yrange [0.5:2]
set ytics ('0.5' 0.5, '1' 1, '2' 2)
set xtics ("W3\n32.6/s" 0) font ',10'
plot 1 with lines lc rgb 'black' lw 2 notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 8 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#d95f02' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 8 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 9 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#7570b3' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 9 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 10 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#1b9e77' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 10 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 11 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#999999' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 11 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle
unset label
set title "sender CPU per message" font ",12"
set yrange [0.5:2]
set ytics ('0.5' 0.5, '1' 1, '2' 2)
set xtics ("W3\n21.8 s/1000" 0) font ',10'
plot 1 with lines lc rgb 'black' lw 2 notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 12 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#d95f02' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 12 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 13 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#7570b3' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 13 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 14 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#1b9e77' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 14 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 15 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#999999' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 15 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle
unset label
set title "receiver CPU per message" font ",12"
set yrange [0.5:2]
set ytics ('0.5' 0.5, '1' 1, '2' 2)
set xtics ("W3\n17.6 s/1000" 0) font ',10'
plot 1 with lines lc rgb 'black' lw 2 notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 16 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#d95f02' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 16 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 17 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#7570b3' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 17 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 18 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#1b9e77' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 18 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 19 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#999999' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 19 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle
unset label
set title "latency p50" font ",12"
set yrange [0.5:2.07407]
set ytics ('0.5' 0.5, '1' 1, '2' 2)
set xtics ("W3\n0.14 s" 0) font ',10'
plot 1 with lines lc rgb 'black' lw 2 notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 20 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#d95f02' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 20 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 21 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#7570b3' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 21 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 22 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#1b9e77' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 22 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 23 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#999999' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 23 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle
unset label
set title "latency p99" font ",12"
set yrange [0.5:2]
set ytics ('0.5' 0.5, '1' 1, '2' 2)
set xtics ("W3\n0.81 s" 0) font ',10'
plot 1 with lines lc rgb 'black' lw 2 notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 24 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#d95f02' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 24 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 25 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#7570b3' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 25 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 26 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#1b9e77' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 26 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 27 using 1:2:3:4:5:6 with boxxyerrorbars lc rgb '#999999' notitle, '/work/main/bench/results/20261207-w3-repeat6-37/chart.dat' index 27 using 1:($2 >= 1 ? $6*1.12 : $5/1.12):(sprintf('%.2g', $2)) with labels font ',8' notitle
unset label
unset title
unset xtics
unset ytics
unset grid
unset border
unset logscale y
set xrange [0:1]
set yrange [0:1]
set key center center font ',12' spacing 1.6 samplen 2
set label 1 'under each workload: the value for stock reuse off' at 0.02,0.1 font ',10'
plot NaN with boxes lc rgb '#d95f02' title 'stock reuse on', NaN with boxes lc rgb '#7570b3' title 'patched reuse off', NaN with boxes lc rgb '#1b9e77' title 'patched reuse on', NaN with boxes lc rgb '#999999' title 'stock no TLS (floor)'
unset multiplot
