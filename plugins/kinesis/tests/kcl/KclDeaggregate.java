import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.Base64;
import java.util.List;
import software.amazon.kinesis.retrieval.AggregatorUtil;
import software.amazon.kinesis.retrieval.KinesisClientRecord;

/**
 * Deaggregates Kinesis records with the KCL's own AggregatorUtil, for the Kinesis sink's
 * tests (test_kinesis_kcl.py). Run as a single-file program against the KCL jars.
 *
 * <p>Input, one Kinesis record per line, tab-separated: the shard's starting and ending
 * hash key, the sequence number, the partition key and the data, the last two in base64.
 * Output, one user record per line: the sequence number, the sub-sequence number,
 * whether the KCL took it from an aggregate, the partition key and the data (base64).
 * The KCL drops user records whose key hashes outside the shard's range, as it does when
 * it reads a stream.
 */
public final class KclDeaggregate {
  public static void main(String[] args) throws IOException {
    Base64.Decoder decode = Base64.getDecoder();
    Base64.Encoder encode = Base64.getEncoder();
    AggregatorUtil util = new AggregatorUtil();
    BufferedReader in =
        new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    PrintStream out = new PrintStream(System.out, false, StandardCharsets.UTF_8);
    String line;
    while ((line = in.readLine()) != null) {
      String[] f = line.split("\t", -1);
      KinesisClientRecord record =
          KinesisClientRecord.builder()
              .sequenceNumber(f[2])
              .partitionKey(new String(decode.decode(f[3]), StandardCharsets.UTF_8))
              .data(ByteBuffer.wrap(decode.decode(f[4])))
              .approximateArrivalTimestamp(Instant.EPOCH)
              .build();
      List<KinesisClientRecord> users =
          util.deaggregate(List.of(record), new BigInteger(f[0]), new BigInteger(f[1]));
      for (KinesisClientRecord u : users) {
        ByteBuffer data = u.data();
        byte[] bytes = new byte[data.remaining()];
        data.get(bytes);
        out.println(
            String.join(
                "\t",
                f[2],
                Long.toString(u.subSequenceNumber()),
                Boolean.toString(u.aggregated()),
                encode.encodeToString(u.partitionKey().getBytes(StandardCharsets.UTF_8)),
                encode.encodeToString(bytes)));
      }
    }
    out.flush();
  }
}
